// Progressive enhancement only: the pages work without it.
// A "copy" button on each snippet, so the exact text goes to the clipboard.
document.querySelectorAll("pre[data-copy]").forEach(function (pre) {
  if (!navigator.clipboard) { return; }
  var button = document.createElement("button");
  button.type = "button";
  button.className = "copy";
  button.textContent = "copy";
  button.setAttribute("aria-label", "copy this snippet");
  button.addEventListener("click", function () {
    navigator.clipboard.writeText(pre.querySelector("code").textContent).then(function () {
      button.textContent = "copied";
      setTimeout(function () { button.textContent = "copy"; }, 1500);
    });
  });
  pre.appendChild(button);
});
