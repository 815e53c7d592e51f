# Decode a CVL map string (key=value&key=value, every byte outside A-Za-z0-9 written %XX)
# read from stdin into DIR: one file per key, one decoded value per line, in source order.
# Used with -v dir=DIR to write files, or -v key=KEY to print the values of one key.
# Exits 2 with a message on stderr when the string is malformed.
function hexval(c) { return index("0123456789abcdef", tolower(c)) - 1 }
function unescape(s,    out, i, c, h, l) {
    out = ""
    for (i = 1; i <= length(s); i++) {
        c = substr(s, i, 1)
        if (c == "%") {
            h = hexval(substr(s, i + 1, 1)); l = hexval(substr(s, i + 2, 1))
            if (h < 0 || l < 0) { bad("bad escape at byte " i ": " substr(s, i, 3)) }
            out = out sprintf("%c", h * 16 + l)
            i += 2
        } else if (c ~ /[A-Za-z0-9]/) {
            out = out c
        } else {
            bad("unescaped byte '" c "' at byte " i)
        }
    }
    return out
}
function bad(msg) { print "map string: " msg > "/dev/stderr"; failed = 1; exit 2 }
{ text = text $0 }
END {
    if (failed) exit 2
    if (text == "") exit 0
    n = split(text, pairs, "&")
    for (p = 1; p <= n; p++) {
        eq = index(pairs[p], "=")
        if (eq == 0) bad("pair " p " has no '='")
        k = unescape(substr(pairs[p], 1, eq - 1))
        v = unescape(substr(pairs[p], eq + 1))
        if (index(v, "\n")) bad("value of " k " contains a newline")
        if (dir != "") {
            if (k !~ /^[A-Za-z0-9][A-Za-z0-9._-]*$/) bad("key '" k "' is not a parameter name")
            f = dir "/" k
            print v >> f
            close(f)
        } else if (k == key) {
            print v
        }
    }
}
