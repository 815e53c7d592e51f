# Collective guest agent: functions shared by the agent and by appliance hooks.
# Hooks are sourced in a subshell with this file loaded, so they can call every function here.
# busybox ash; no bashisms.

AGENT_VERSION=1
# The COLLECTIVE_* overrides exist for the host-side unit tests (tests/unit/test_agent_lib.py);
# in the guest nothing sets them.
AGENT=${COLLECTIVE_AGENT:-/agent}   # the agent's own files (lib.sh, mapdecode.awk, openssl.cnf)
RUN=${COLLECTIVE_RUN:-/run/collective}  # tmpfs: parameters and state live in RAM only
PARAMS=$RUN/params                  # one file per parameter, one value per line
SVC=$RUN/svc                        # pid files of the service's processes
APPLIANCE=/appliance                # the appliance's own files: info, hooks/, templates/
DATA=${COLLECTIVE_DATA:-/data}      # the data disk's mount point (when the appliance has one)
CONSOLE=${COLLECTIVE_CONSOLE:-/dev/console}
SHADOW=${COLLECTIVE_SHADOW:-/etc/shadow}
export OPENSSL_CONF=$AGENT/openssl.cnf  # for appliances that carry openssl (certificates)

# Wall-clock seconds with microseconds (busybox date has no %N; adjtimex does).
stamp() {
    adjtimex 2>/dev/null | awk '/time.tv_sec/ {s = $2} /time.tv_usec/ {u = $2}
                              END {printf "%d.%06d", s, u}'
}

# log EVENT [DETAILS...]: one console line per boot milestone, for people and for tests.
log() {
    echo "collective-agent $(stamp) $*" > "$CONSOLE"
}

# info KEY: a value from the image's /appliance/info (KEY=VALUE lines written at build time).
info() {
    sed -n "s/^$1=//p" "$APPLIANCE/info" | head -n 1
}

# param NAME: the first value of parameter NAME ("" when unset).
param() {
    [ -f "$PARAMS/$1" ] && head -n 1 "$PARAMS/$1"
    return 0
}

# param_all NAME: every value of parameter NAME, one per line.
param_all() {
    [ -f "$PARAMS/$1" ] && cat "$PARAMS/$1"
    return 0
}

# has_param NAME: true when NAME has at least one value.
has_param() {
    [ -f "$PARAMS/$1" ]
}

# require_param NAME...: fail (exit 1 from the hook) naming the first missing parameter.
require_param() {
    for _p in "$@"; do
        has_param "$_p" || { echo "required parameter $_p is not set" >&2; exit 1; }
    done
}

# map_get MAPSTRING KEY: the first value of KEY in a CVL map string (for map-valued parameters
# such as dnshosts entries "name=l&ip=10.0.1.3").
map_get() {
    printf '%s\n' "$1" | awk -v key="$2" -f "$AGENT/mapdecode.awk" | head -n 1
}

# render TEMPLATE OUT: copy TEMPLATE to OUT replacing each {{name}} by the first value of
# parameter name. An unset parameter is an error that names it. OUT is replaced atomically.
render() {
    awk -v dir="$PARAMS" '
        {
            line = $0; out = ""
            while ((s = index(line, "{{")) > 0) {
                rest = substr(line, s + 2); e = index(rest, "}}")
                if (e == 0) break
                name = substr(rest, 1, e - 1)
                f = dir "/" name; v = ""
                if ((getline v < f) <= 0) {
                    print FILENAME ":" NR ": parameter " name " is not set" > "/dev/stderr"; exit 1
                }
                close(f)
                out = out substr(line, 1, s - 1) v
                line = substr(rest, e + 2)
            }
            print out line
        }' "$1" > "$2.tmp" && mv "$2.tmp" "$2"
}

# daemon NAME COMMAND...: start a foreground-mode service process in the background and
# remember its pid, so the agent can stop exactly the service (and nothing else) on resend.
daemon() {
    _name=$1; shift
    mkdir -p "$SVC"
    "$@" > /dev/console 2>&1 < /dev/null &
    echo $! > "$SVC/$_name.pid"
}

# stop_daemons: TERM every process started with `daemon`, KILL what is left after 5 s.
stop_daemons() {
    for _f in "$SVC"/*.pid; do
        [ -f "$_f" ] || continue
        _pid=$(cat "$_f")
        kill "$_pid" 2>/dev/null
        _i=0
        while kill -0 "$_pid" 2>/dev/null && [ $_i -lt 50 ]; do sleep 0.1; _i=$((_i + 1)); done
        kill -9 "$_pid" 2>/dev/null
        rm -f "$_f"
    done
}

# prefix_of NETMASK: the prefix length of a dotted netmask (255.255.255.0 -> 24).
prefix_of() {
    ipcalc -p 0.0.0.0 "$1" | sed -n 's/^PREFIX=//p'
}

# port_number PARAM DEFAULT: the number of a "53/udp"-style port parameter, DEFAULT when unset.
port_number() {
    _port=$(param "$1"); _port=${_port%%/*}
    echo "${_port:-$2}"
}

# iface ethernetN: the guest network device configured for ethernetN (eth0 when not configured).
iface() {
    cat "$RUN/if/$1" 2>/dev/null || echo "eth${1#ethernet}"
}

# set_root_password: the `rootpw` parameter (sensitive) becomes root's password. Only its salted
# SHA-512 crypt hash is written (/etc/shadow, in RAM); without `rootpw` root cannot log in.
set_root_password() {
    _hash='!'
    if has_param rootpw; then
        _hash=$(param rootpw | tr -d '\n' | mkpasswd -m sha512 -P 0) || return 1
    fi
    printf 'root:%s:0:0:99999:7:::\n' "$_hash" > "$SHADOW.new" && chmod 600 "$SHADOW.new" \
        && mv "$SHADOW.new" "$SHADOW"
}

# subject_dn: the X.509 subject from the certificate parameters (country, state, city, org, ou,
# certemail) for `openssl -subj`, then "/CN=" and $1; unset parameters are left out.
subject_dn() {
    for _pair in C:country ST:state L:city O:org OU:ou emailAddress:certemail; do
        _v=$(param "${_pair#*:}" | sed 's,[/\\],\\&,g')
        [ -n "$_v" ] && printf '/%s=%s' "${_pair%%:*}" "$_v"
    done
    printf '/CN=%s\n' "$(printf '%s' "$1" | sed 's,[/\\],\\&,g')"
}

# tls_certificate DIR NAME: a P-256 key DIR/NAME.key and a certificate DIR/NAME.crt signed by
# the VAN's certificate authority, whose certificate is kept in DIR/ca.crt. The CA is the
# appliance at parameter `ca` (an address) on port `caport` (default 8440): it gets a request
# (the key never leaves this VM) and signs it for the name and address it knows this VM by.
# A certificate already in DIR that verifies against DIR/ca.crt is kept (data disks keep them
# across updates); the key is made once.
tls_certificate() {
    _dir=$1; _name=$2
    if [ -s "$_dir/$_name.crt" ] && [ -s "$_dir/ca.crt" ] \
        && openssl verify -CAfile "$_dir/ca.crt" "$_dir/$_name.crt" > /dev/null 2>&1; then
        return 0
    fi
    require_param ca
    _ca="http://$(param ca):$(port_number caport 8440)"
    mkdir -p "$_dir" && chmod 700 "$_dir"
    if [ ! -s "$_dir/$_name.key" ]; then
        openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$_dir/$_name.key.tmp" \
            2> /dev/null && mv "$_dir/$_name.key.tmp" "$_dir/$_name.key" \
            || { echo "cannot make a key in $_dir" >&2; return 1; }
    fi
    openssl req -new -key "$_dir/$_name.key" -subj "/CN=$_name" -out "$_dir/$_name.csr" \
        || { echo "cannot make a certificate request" >&2; return 1; }
    _i=0
    # (no wget -T: it crashes busybox 1.35; timeout bounds each try)
    until timeout 10 wget -q -O "$_dir/$_name.crt.tmp" --post-file "$_dir/$_name.csr" "$_ca/cgi-bin/sign" \
        2> "$_dir/wget.err" && timeout 10 wget -q -O "$_dir/ca.crt.tmp" "$_ca/ca.crt" 2> "$_dir/wget.err"; do
        _i=$((_i + 1))
        [ $_i -lt 10 ] || { echo "the certificate authority at $_ca: $(tail -n 1 "$_dir/wget.err")" >&2; return 1; }
        sleep 1
    done
    # -attime: the CA's clock may be a second ahead of ours (its notBefore is its "now")
    openssl verify -attime $(($(date +%s) + 300)) -CAfile "$_dir/ca.crt.tmp" "$_dir/$_name.crt.tmp" \
        > /dev/null 2>&1 \
        || { echo "the certificate from $_ca does not verify against its CA" >&2; return 1; }
    mv "$_dir/ca.crt.tmp" "$_dir/ca.crt" && mv "$_dir/$_name.crt.tmp" "$_dir/$_name.crt"
    rm -f "$_dir/$_name.csr"
    sync
    log tls "certificate $_name from $_ca: $(openssl x509 -in "$_dir/$_name.crt" -noout -subject)"
}
