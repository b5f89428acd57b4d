#!/bin/sh
# The wgtel VM test (busybox sh), run by /init on a kernel that has the WireGuard module
# (Debian's 5.10, without tcx and drop reasons, 6.1, without tcx, and 6.12, with both).
#
# The root network namespace is the gateway, the namespace `peer` its one real peer, joined by
# a veth pair (198.18.9.1/24, 198.18.9.2/24). Each side has a kernel WireGuard interface wg0
# (tunnel 198.19.9.1/24 and 198.19.9.2/32). The gateway's wg0 has three more peers, one per
# way WireGuard fails: `noep` (198.19.9.3, no endpoint), `silent` (198.19.9.4, an endpoint
# that swallows everything: its handshake never completes) and `flood` (198.19.9.5, the same,
# flooded past WireGuard's queue of packets waiting for a handshake). A second interface, wg1,
# stays down and holds 1,200 peers with three AllowedIPs each, one with 1,000 more (the kernel
# splits its dump across many netlink messages, that peer across several). wgtel runs on the gateway, started before any handshake.
#
# Checks (exact):
# - attachment: tcx links on 6.6+ (no tc filter, no clsact qdisc), clsact filters before;
# - what the kernel cannot give, in /api/v1/interfaces' `unavailable` and in one log line:
#   `tcx` before 6.6, `drop_reasons` before 5.17 (drops counted there, all as `unknown`);
# - the first handshake: one initiator sample (`handshake_rtt_ms.count` 1), no responder one;
# - 1 + 50 pings, then 8 pings of 1300 bytes over a 1280-byte underlay (1420 tunnel): 59
#   packets each way, and exactly 16 outer fragments each way, on that peer only, and none of
#   their echo replies a drop;
# - bulk: 8 MiB of TCP each way: tunnel packets = the segments the stacks sent, underlay
#   transport data = tunnel packets (less wg0's queue drops), nothing invalid;
# - every peer of wg0 and wg1 in /api/v1/peers equals `wg show all dump` field by field
#   (endpoint, AllowedIPs, rx/tx bytes, persistent keepalive, last handshake to the second),
#   nothing lost or doubled, and wg1's peers are exactly those configured;
# - failures: 7 pings to no peer, 7 to `noep`, 5 to `silent`, 300 to `flood`: the drops (and
#   their reasons, where the kernel gives them) wgtel reports, the ICMP unreachables and wg0's
#   tx_dropped, per kernel (written up in docs/kernel-drop-reasons.md);
# - diagnosis: handshake_unanswered on `silent`, handshake_rejected on `rej` (a WireGuard the
#   gateway knows that holds a wrong key for it), no_peer_route on wg0;
# - `wgtel probe` from the peer's namespace as a monitoring peer: 3 echoes answered; a wrong
#   gateway key exits 1; the monitoring key printed nowhere;
# - wgtel exits cleanly on SIGTERM and leaves nothing attached: no tc filter or qdisc, and
#   the kernel holds as many BPF programs, links and maps as before wgtel started;
# - `--debug-ebpf`: a 3-byte datagram to the WireGuard port is logged once;
# - `--netns peer`: the peer namespace's own wg0 read over netlink there, 20 pings exactly 20
#   packets each way on its peer, labelled `peer`; nothing left attached there after exit.
# Prints `WGTEL-VM: PASS` or `WGTEL-VM: FAIL reason`. Never prints a private key.

API=http://127.0.0.1:9587
# Debian's busybox runs its own applets before PATH: `ip` must be iproute2's.
ip() { /usr/sbin/ip "$@"; }
tc() { /usr/sbin/tc "$@"; }

fail() {
    echo "wgtel-vm: --- wgtel log ---"
    cat /tmp/wgtel.log 2>/dev/null
    echo "WGTEL-VM: FAIL $*"
    exit 1
}

# Runs a command in the peer's network namespace.
in_peer() {
    nsenter --net=/run/netns/peer "$@"
}

icmp_counter() {
    # /proc/net/snmp: a header line "Icmp: InMsgs ..." then the values line.
    awk -v name="$1" '/^Icmp:/ { if (!seen) { for (i = 1; i <= NF; i++) col[$i] = i; seen = 1 }
        else { print $col[name] } }' /proc/net/snmp
}

# "in/out ICMP unreachables, tx_dropped, tx_errors of wg0", for differences.
counters() {
    echo "$(icmp_counter InDestUnreachs) $(icmp_counter OutDestUnreachs)" \
        "$(cat /sys/class/net/wg0/statistics/tx_dropped)" \
        "$(cat /sys/class/net/wg0/statistics/tx_errors)"
}

# What changed between two `counters` outputs.
deltas() {
    set -- $1 $2
    echo "$(($5 - $1)) $(($6 - $2)) $(($7 - $3)) $(($8 - $4))"
}

# Prints and checks what changed between two `counters` outputs ($3, $4) for scenario $1 ($2,
# a short name): $5 is "InDestUnreachs OutDestUnreachs tx_dropped tx_errors", the change wanted.
report_counters() {
    set -- "$1" "$2" "$(deltas "$3" "$4")" "$5"
    echo "wgtel-vm: measured $1: (ICMP InDestUnreachs OutDestUnreachs, wg0 tx_dropped tx_errors)" \
        "+ $3"
    check "counters_$2" "$3" "$4"
}

# The API's peers (and wg0's alone, read field by field: one parse of wg1's 1,200 peers takes
# seconds under TCG) and interfaces.
snapshot() {
    wget -qO- "$API/api/v1/peers" > /tmp/peers.json || fail "GET /api/v1/peers"
    wgtel-vm-check only /tmp/peers.json wg0 > /tmp/peers-wg0.json || fail "wg0's peers"
    wget -qO- "$API/api/v1/interfaces" > /tmp/interfaces.json || fail "GET /api/v1/interfaces"
}

# How long wgtel's latest collection took, in seconds (TCG makes it slow).
collection_seconds() {
    wget -qO- "$API/metrics" | awk '/^wgtel_collection_duration_seconds / { print $2 }'
}

# A field of a peer of wg0 (by public key) or an interface (by name) in the last snapshot.
peer_field() { wgtel-vm-check field /tmp/peers-wg0.json "$1" "$2"; }
interface_field() { wgtel-vm-check field /tmp/interfaces.json "$1" "$2"; }

# Polls until `$2` (a command) prints `$3`, for up to $1 seconds; takes fresh snapshots.
await() {
    deadline=$(($(date +%s) + $1))
    while :; do
        snapshot
        [ "$(eval "$2")" = "$3" ] && return 0
        [ "$(date +%s)" -lt "$deadline" ] || return 1
        sleep 0.5
    done
}

errors=""
check() { # name, got, want
    if [ "$2" = "$3" ]; then
        echo "wgtel-vm: ok   $1 = $2"
    else
        echo "wgtel-vm: FAIL $1 = $2, want $3"
        errors="$errors $1"
    fi
}

set -u

KERNEL=$(uname -r)
MAJOR=${KERNEL%%.*}
MINOR=${KERNEL#*.}
MINOR=${MINOR%%.*}
# At least $1.$2?
at_least() {
    [ "$MAJOR" -gt "$1" ] || { [ "$MAJOR" -eq "$1" ] && [ "$MINOR" -ge "$2" ]; }
}
if at_least 6 6; then TCX=1; else TCX=0; fi
# The release wgtel names in its reasons (aya's: Debian's upstream version in /proc/version).
UPSTREAM=$(sed -n 's/.*Debian \([0-9][0-9.]*\).*/\1/p' /proc/version)
# The reason of a plain kfree_skb (no peer, no endpoint), and of the packets WireGuard drops
# from a peer's queue when it gives up on a handshake (`__skb_queue_purge`), as measured:
# 5.10 gives no reasons at all (wgtel counts `unknown`), 6.1 names none for the purge, 6.12
# says QUEUE_PURGE.
if at_least 5 17; then
    REASONS=1
    UNSPECIFIED=NOT_SPECIFIED
    WG0_DROPS='{"NOT_SPECIFIED":7,"no_peer":7}'
else
    REASONS=0
    UNSPECIFIED=unknown
    WG0_DROPS='{"no_peer":7,"unknown":7}'
fi
case "$KERNEL" in
    5.10.*) PURGE=unknown ;;
    6.1.*) PURGE=NOT_SPECIFIED ;;
    *) PURGE=QUEUE_PURGE ;;
esac

ip netns add peer || fail "ip netns add peer"
ip link add veth0 type veth peer name veth1 || fail "veth"
ip link set veth1 netns peer || fail "moving veth1"
ip -n peer link set veth1 address 02:00:00:00:09:02
ip addr add 198.18.9.1/24 dev veth0
ip link set veth0 up
ip -n peer addr add 198.18.9.2/24 dev veth1
ip -n peer link set veth1 up
ip -n peer link set lo up
# 198.18.9.200 is the endpoint that swallows everything: frames go to the peer's veth1, whose
# namespace does not forward and so drops them without a word (no ICMP).
ip neigh replace 198.18.9.200 lladdr 02:00:00:00:09:02 dev veth0 nud permanent

umask 077
wg genkey > /tmp/gateway.key || fail "wg genkey"
wg genkey > /tmp/peer.key || fail "wg genkey"
GATEWAY_PUB=$(wg pubkey < /tmp/gateway.key)
PEER_PUB=$(wg pubkey < /tmp/peer.key)
# Peers whose private keys nobody needs.
NOEP_PUB=$(wg genkey | wg pubkey)
SILENT_PUB=$(wg genkey | wg pubkey)
FLOOD_PUB=$(wg genkey | wg pubkey)

ip link add wg0 type wireguard || fail "ip link add wg0 type wireguard"
wg set wg0 private-key /tmp/gateway.key listen-port 51820 \
    peer "$PEER_PUB" endpoint 198.18.9.2:51820 allowed-ips 198.19.9.2/32 \
    peer "$NOEP_PUB" allowed-ips 198.19.9.3/32 \
    peer "$SILENT_PUB" endpoint 198.18.9.200:51820 allowed-ips 198.19.9.4/32 \
    peer "$FLOOD_PUB" endpoint 198.18.9.200:51821 allowed-ips 198.19.9.5/32 \
    || fail "wg set (gateway)"
ip addr add 198.19.9.1/24 dev wg0
ip link set wg0 up

ip -n peer link add wg0 type wireguard || fail "ip link add wg0 (peer)"
in_peer wg set wg0 private-key /tmp/peer.key listen-port 51820 \
    peer "$GATEWAY_PUB" endpoint 198.18.9.1:51820 allowed-ips 198.19.9.1/32 \
    || fail "wg set (peer)"
ip -n peer addr add 198.19.9.2/32 dev wg0
ip -n peer link set wg0 up
ip -n peer route add 198.19.9.1/32 dev wg0

BPF_BEFORE=$(wgtel-vm-check bpf-objects) || fail "counting BPF objects"
wgtel run --interval 500ms --listen 127.0.0.1:9587 > /tmp/wgtel.log 2>&1 &
WGTEL=$!
tries=0
until wget -qO- "$API/api/v1/peers" 2>/dev/null | grep -q "$PEER_PUB" \
    && grep -q "watching underlay veth0" /tmp/wgtel.log; do
    tries=$((tries + 1))
    [ "$tries" -le 240 ] || fail "wgtel did not list the peer and attach to veth0 within 120 s"
    kill -0 "$WGTEL" 2>/dev/null || fail "wgtel exited"
    sleep 0.5
done
until wget -qO- "$API/healthz" > /dev/null 2>&1; do
    tries=$((tries + 1))
    [ "$tries" -le 240 ] || fail "wgtel /healthz not ready within 120 s"
    sleep 0.5
done
echo "wgtel-vm: wgtel ready after ~$((tries / 2)) s on $KERNEL"
grep -e "attached" -e "underlay" /tmp/wgtel.log | sed 's/^/wgtel-vm: log: /'

# How wgtel attached: tcx links (invisible to tc) on 6.6+, clsact filters before.
if [ "$TCX" -eq 1 ]; then
    check attach_log "$(grep -c 'attached to wg0 (kernel, 4 peers, via Tcx)' /tmp/wgtel.log)" 1
    check tc_filters_wg0 "$(tc filter show dev wg0 ingress)$(tc filter show dev wg0 egress)" ""
    check clsact_wg0 "$(tc qdisc show dev wg0 | grep -c clsact)" 0
else
    check attach_log "$(grep -c 'attached to wg0 (kernel, 4 peers, via Clsact)' /tmp/wgtel.log)" 1
    check tc_filters_wg0 "$(tc filter show dev wg0 ingress | grep -c 'tunnel_ingress')" 1
    check clsact_wg0 "$(tc qdisc show dev wg0 | grep -c clsact)" 1
fi

# What this kernel cannot give: in the API, in the order wgtel found it, each with its reason
# (and at the end: logged in one line at start, never again).
snapshot
NO_TCX="kernel $UPSTREAM has no tcx (6.6+)"
NO_REASONS="kernel $UPSTREAM has no skb drop reasons (5.17+)"
reason_start() { interface_field wg0 "unavailable.$1.reason" | cut -d: -f1; }
case "$TCX$REASONS" in
    00)
        check unavailable "$(interface_field wg0 'unavailable.*.feature')" '["tcx","drop_reasons"]'
        check unavailable_tcx "$(reason_start 0)" "\"$NO_TCX"
        check unavailable_drop_reasons "$(reason_start 1)" "\"$NO_REASONS"
        ;;
    01)
        check unavailable "$(interface_field wg0 'unavailable.*.feature')" '["tcx"]'
        check unavailable_tcx "$(reason_start 0)" "\"$NO_TCX"
        ;;
    11) check unavailable "$(interface_field wg0 unavailable)" '[]' ;;
    *) fail "unexpected kernel $KERNEL: tcx $TCX, drop reasons $REASONS" ;;
esac
UNAVAILABLE=$(interface_field wg0 unavailable)

# The failures whose drops come late (after WireGuard gives up on the handshake, about 90 s
# after the first packet) go first.
C0=$(counters)
ping -c 5 -i 0.2 -W 1 198.19.9.4 > /dev/null 2>&1
C1=$(counters)
report_counters "5 pings to silent (no handshake yet)" silent "$C0" "$C1" "0 0 0 0"
ping -c 300 -i 0.01 -W 1 198.19.9.5 > /dev/null 2>&1
C2=$(counters)
report_counters "300 pings to flood (queue full)" flood "$C1" "$C2" "0 0 171 0"
FAILURES_SENT=$(date +%s)
# Until WireGuard gives up, nothing of it is a kernel drop: 129 packets wait in flood's queue
# and the 171 pushed out of it were freed as consumed (dev_kfree_skb), not dropped.
await 10 'peer_field "$FLOOD_PUB" tx_packets' 300 || true
check queued_silent_drops "$(peer_field "$SILENT_PUB" drops)" "{}"
check queued_flood_drops "$(peer_field "$FLOOD_PUB" drops)" "{}"

# No endpoint, and no peer: the module refuses the packet at once. sendto fails (EDESTADDRREQ,
# ENOKEY), which ends busybox's ping after its first packet: hence single pings.
for attempt in 1 2 3 4 5 6 7; do
    ping -c 1 -W 1 198.19.9.3 >> /tmp/ping-noep.txt 2>&1
done
C3=$(counters)
report_counters "7 pings to noep (no endpoint)" noep "$C2" "$C3" "7 7 0 7"
sort /tmp/ping-noep.txt | uniq -c | sed 's/^/wgtel-vm:   ping: /'
for attempt in 1 2 3 4 5 6 7; do
    ping -c 1 -W 1 198.19.9.250 >> /tmp/ping-no-peer.txt 2>&1
done
C4=$(counters)
report_counters "7 pings to 198.19.9.250 (no peer)" no_peer "$C3" "$C4" "7 7 0 7"
sort /tmp/ping-no-peer.txt | uniq -c | sed 's/^/wgtel-vm:   ping: /'

# The first handshake, seen by wgtel: one initiator sample.
ping -c 1 -W 5 198.19.9.2 > /dev/null || fail "no handshake: the first ping through wg0 failed"
await 10 'peer_field "$PEER_PUB" handshake_rtt_ms.count' 1
echo "wgtel-vm: tunnel up"

ping -c 50 -i 0.05 -W 5 198.19.9.2 > /tmp/ping.txt 2>&1
grep -q "50 packets transmitted, 50 packets received" /tmp/ping.txt \
    || { cat /tmp/ping.txt; fail "ping through wg0 lost packets"; }

# Fragments: a 1280-byte underlay under the 1420-byte tunnel. 1300 bytes of ICMP payload: a
# 1328-byte inner packet, a 1388-byte outer one, two fragments each way.
ip link set veth0 mtu 1280
ip -n peer link set veth1 mtu 1280
ping -c 8 -i 0.05 -W 5 -s 1300 198.19.9.2 > /tmp/ping-big.txt 2>&1
grep -q "8 packets transmitted, 8 packets received" /tmp/ping-big.txt \
    || { cat /tmp/ping-big.txt; fail "big pings through wg0 lost packets"; }
ip link set veth0 mtu 1500
ip -n peer link set veth1 mtu 1500

# Persistent keepalive, read back over generic netlink (setting it sends one keepalive).
wg set wg0 peer "$PEER_PUB" persistent-keepalive 3600 || fail "wg set persistent-keepalive"

# 1,200 peers with three AllowedIPs each, one of them with 1,000 more (more than a netlink
# message holds), on wg1, which stays down (no traffic at all).
ip link add wg1 type wireguard || fail "ip link add wg1 type wireguard"
wg genkey > /tmp/wg1.key || fail "wg genkey"
wg set wg1 private-key /tmp/wg1.key listen-port 51821 || fail "wg set wg1"
await 20 'interface_field wg1 peers' 0 || fail "wgtel did not find wg1"
wgtel-vm-check bulk-config 1200 > /tmp/bulk.conf || fail "bulk-config"
started=$(date +%s)
wg addconf wg1 /tmp/bulk.conf || fail "wg addconf wg1"
echo "wgtel-vm: 1200 peers added to wg1 in $(($(date +%s) - started)) s"
await 120 'interface_field wg1 peers' 1200 || fail "wgtel did not list wg1's 1200 peers"
echo "wgtel-vm: wgtel lists wg1's 1200 peers after $(($(date +%s) - started)) s;" \
    "a collection takes $(collection_seconds) s"
# Adding a peer registers its NAPI instance, and on 6.1 and 6.12 the kernel's self-check of that
# frees an empty buffer with kfree_skb on wg1 (napi_get_frags_check): not a drop, and not
# counted as one.
sleep 2
snapshot
check wg1_drops "$(interface_field wg1 drops)" '{"no_peer":0}'

# WireGuard gives up on `silent` and `flood` about 105 s after their first packet (the first
# initiation and 19 retransmissions, 5 s and a jitter apart) and drops what waits in their
# queues, 134 packets, which wg0's tx_dropped counts at once. Waited for in sysfs (a snapshot of
# wg1's 1,200 peers costs the guest seconds of CPU under TCG), then for wgtel's report.
PURGED=$(($(echo "$C4" | cut -d' ' -f3) + 134))
deadline=$((FAILURES_SENT + 150))
until [ "$(cat /sys/class/net/wg0/statistics/tx_dropped)" -ge "$PURGED" ]; do
    [ "$(date +%s)" -lt "$deadline" ] || { echo "wgtel-vm: no purge within 150 s"; break; }
    sleep 1
done
echo "wgtel-vm: WireGuard gave up after ~$(($(date +%s) - FAILURES_SENT)) s"
deadline=$(($(date +%s) + 30))
while :; do
    snapshot
    [ "$(peer_field "$SILENT_PUB" drops)" != "{}" ] && [ "$(peer_field "$FLOOD_PUB" drops)" != "{}" ] \
        && break
    [ "$(date +%s)" -lt "$deadline" ] || { echo "wgtel-vm: no purge drops within 30 s"; break; }
    sleep 1
done
sleep 3
C5=$(counters)
report_counters "the purge of the queues of silent and flood" purge "$C4" "$C5" "0 0 134 0"

# Everything read over generic netlink equals `wg show all dump` (whose interface lines, with
# the private keys, only the checker reads, and never prints). A keepalive may land between
# the daemon's snapshot and the dump: retry.
compared=0
for attempt in 1 2 3 4 5 6; do
    snapshot
    if wg show all dump | wgtel-vm-check compare /tmp/peers.json wg1=/tmp/bulk.conf \
        > /tmp/compare.txt 2>&1; then
        compared=1
        break
    fi
    sed "s/^/wgtel-vm: attempt $attempt: /" /tmp/compare.txt
    echo "wgtel-vm: attempt $attempt: a collection takes $(collection_seconds) s"
    sleep 1
done
sed 's/^/wgtel-vm: /' /tmp/compare.txt
echo "wgtel-vm: compare attempts: $attempt; a collection takes $(collection_seconds) s"
check "api_equals_dump" "$compared" 1

snapshot
for key in "$PEER_PUB" "$NOEP_PUB" "$SILENT_PUB" "$FLOOD_PUB"; do
    echo "wgtel-vm: peer $key: tx_packets $(peer_field "$key" tx_packets)" \
        "rx_packets $(peer_field "$key" rx_packets) drops $(peer_field "$key" drops)" \
        "messages $(peer_field "$key" messages) unanswered $(peer_field "$key" unanswered_initiations)" \
        "health $(peer_field "$key" health)"
done
echo "wgtel-vm: wg0 drops $(interface_field wg0 drops), wg1 drops $(interface_field wg1 drops)"

check attached_wg1 "$(grep -c 'attached to wg1 (kernel, ' /tmp/wgtel.log)" 1
check unavailable_wg1 "$(interface_field wg1 unavailable)" "$UNAVAILABLE"
# One line, written at start, not one per collection.
if [ "$TCX$REASONS" = 11 ]; then WANT_LOG=0; else WANT_LOG=1; fi
check unavailable_log "$(grep -c 'unavailable on this kernel: ' /tmp/wgtel.log)" "$WANT_LOG"
[ "$WANT_LOG" -eq 0 ] || check unavailable_log_tcx \
    "$(grep -c "unavailable on this kernel: tcx: $NO_TCX" /tmp/wgtel.log)" 1
check tx_packets "$(peer_field "$PEER_PUB" tx_packets)" 59
check rx_packets "$(peer_field "$PEER_PUB" rx_packets)" 59
check handshake_rtt_ms.count "$(peer_field "$PEER_PUB" handshake_rtt_ms.count)" 1
check handshake_response_ms "$(peer_field "$PEER_PUB" handshake_response_ms)" null
check fragments "$(peer_field "$PEER_PUB" fragments)" '{"receive":16,"transmit":16}'
for key in "$NOEP_PUB" "$SILENT_PUB" "$FLOOD_PUB"; do
    check "fragments_other" "$(peer_field "$key" fragments)" '{"receive":0,"transmit":0}'
done
check persistent_keepalive "$(peer_field "$PEER_PUB" persistent_keepalive)" 3600
check endpoint "$(peer_field "$PEER_PUB" endpoint)" '"198.18.9.2:51820"'
check allowed_ips "$(peer_field "$PEER_PUB" allowed_ips)" '["198.19.9.2/32"]'
check implementation "$(interface_field wg0 implementation)" '"kernel"'
check wg0_drops "$(interface_field wg0 drops)" "$WG0_DROPS"
check noep_drops "$(peer_field "$NOEP_PUB" drops)" "{\"$UNSPECIFIED\":7}"
check silent_drops "$(peer_field "$SILENT_PUB" drops)" "{\"$PURGE\":5}"
check flood_drops "$(peer_field "$FLOOD_PUB" drops)" "{\"$PURGE\":129}"
check silent_initiations "$(peer_field "$SILENT_PUB" messages.handshake_initiation)" \
    '{"receive":0,"transmit":20}'
check silent_unanswered "$(peer_field "$SILENT_PUB" unanswered_initiations)" 20
check main_drops "$(peer_field "$PEER_PUB" drops)" "{}"
check noep_tx_packets "$(peer_field "$NOEP_PUB" tx_packets)" 7
check silent_tx_packets "$(peer_field "$SILENT_PUB" tx_packets)" 5
check flood_tx_packets "$(peer_field "$FLOOD_PUB" tx_packets)" 300

# Bulk traffic through kernel WireGuard: 8 MiB of TCP each way with busybox's nc, full-size
# segments (MSS 1380 under the 1420-byte tunnel: 1,452-byte messages, not padded to 16). The
# ground truth is the stacks' own counters: the segments each side sent (/proc/net/snmp
# OutSegs + RetransSegs), read with no request to wgtel in between (wget's TCP on loopback
# counts there too), and the packets wg0 dropped from its queue (tx_dropped).
tcp_sent() { # [in_peer]
    "$@" awk '/^Tcp:/ { if (!seen) { for (i = 1; i <= NF; i++) col[$i] = i; seen = 1 }
        else { print $col["OutSegs"] + $col["RetransSegs"] } }' /proc/net/snmp
}
BULK_BYTES=8388608
# Sends BULK_BYTES from the side of $1 ("" or in_peer) to $2:$3, where $4 ("" or in_peer)
# listens, and waits until the listener has them all and the connection is closed.
bulk() {
    rm -f /tmp/bulk.out
    # The listener's input stays open (busybox's nc ends when its input does) until the
    # sleep feeding it is killed.
    (sh -c 'echo $$ > /tmp/bulk.hold; exec sleep 300' | $4 nc -l -p "$3" > /tmp/bulk.out) &
    listener=$!
    sleep 1
    dd if=/dev/zero bs=65536 count=$((BULK_BYTES / 65536)) 2>/dev/null | $1 nc "$2" "$3" \
        || fail "nc to $2:$3"
    deadline=$(($(date +%s) + 120))
    until [ "$(wc -c < /tmp/bulk.out)" -ge "$BULK_BYTES" ]; do
        [ "$(date +%s)" -lt "$deadline" ] || fail "bulk to $2: $(wc -c < /tmp/bulk.out) bytes"
        sleep 0.5
    done
    # Ending the listener's input ends it, and the connection.
    kill "$(cat /tmp/bulk.hold)"
    wait "$listener"
    sleep 2
}
snapshot
BULK_BEFORE="$(peer_field "$PEER_PUB" tx_packets) $(peer_field "$PEER_PUB" rx_packets)"
BULK_BEFORE="$BULK_BEFORE $(peer_field "$PEER_PUB" messages.transport_data.transmit)"
BULK_BEFORE="$BULK_BEFORE $(peer_field "$PEER_PUB" messages.transport_data.receive)"
G0=$(tcp_sent); P0=$(tcp_sent in_peer); Q0=$(cat /sys/class/net/wg0/statistics/tx_dropped)
bulk "" 198.19.9.2 5201 in_peer
bulk in_peer 198.19.9.1 5202 ""
G1=$(tcp_sent); P1=$(tcp_sent in_peer); Q1=$(cat /sys/class/net/wg0/statistics/tx_dropped)
set -- $BULK_BEFORE
WANT_TX=$(($1 + G1 - G0)); WANT_RX=$(($2 + P1 - P0))
echo "wgtel-vm: bulk: the gateway's stack sent $((G1 - G0)) segments, the peer's $((P1 - P0));" \
    "wg0 dropped $((Q1 - Q0)) from its queue"
await 30 'echo "$(peer_field "$PEER_PUB" tx_packets) $(peer_field "$PEER_PUB" rx_packets)"' \
    "$WANT_TX $WANT_RX" || true
sleep 2
snapshot
check bulk_tunnel "$(peer_field "$PEER_PUB" tx_packets) $(peer_field "$PEER_PUB" rx_packets)" \
    "$WANT_TX $WANT_RX"
check bulk_underlay_data \
    "$(peer_field "$PEER_PUB" messages.transport_data.transmit) $(peer_field "$PEER_PUB" messages.transport_data.receive)" \
    "$(($3 + G1 - G0 - (Q1 - Q0))) $(($4 + P1 - P0))"
check bulk_invalid "$(peer_field "$PEER_PUB" messages.invalid)" '{"receive":0,"transmit":0}'
echo "wgtel-vm: bulk: the peer's drops $(peer_field "$PEER_PUB" drops)"

# Diagnosis on kernel WireGuard, from fresh evidence (a code holds only while it does):
# `silent` never answers (handshake_unanswered); `rej`, a WireGuard in the peer's namespace
# that the gateway knows but which holds a wrong key for it, sends initiations the gateway
# cannot decrypt (handshake_rejected); packets into wg0 that no AllowedIPs accept
# (no_peer_route).
ping -c 1 -W 1 198.19.9.4 > /dev/null 2>&1
await 40 'peer_field "$SILENT_PUB" diagnosis.*.code' '["handshake_unanswered"]' || true
check diagnosis_silent "$(peer_field "$SILENT_PUB" diagnosis.*.code)" '["handshake_unanswered"]'
wg genkey > /tmp/rej.key
REJ_PUB=$(wg pubkey < /tmp/rej.key)
WRONG_PUB=$(wg genkey | wg pubkey)
wg set wg0 peer "$REJ_PUB" endpoint 198.18.9.2:51822 allowed-ips 198.19.9.7/32 \
    || fail "wg set (rej on the gateway)"
in_peer ip link add wg2 type wireguard || fail "ip link add wg2"
in_peer wg set wg2 private-key /tmp/rej.key listen-port 51822 \
    peer "$WRONG_PUB" endpoint 198.18.9.1:51820 allowed-ips 198.19.9.1/32 persistent-keepalive 1 \
    || fail "wg set (rej)"
in_peer ip link set wg2 up
await 40 'peer_field "$REJ_PUB" diagnosis.*.code' '["handshake_rejected"]' || true
check diagnosis_rejected "$(peer_field "$REJ_PUB" diagnosis.*.code)" '["handshake_rejected"]'
in_peer ip link del wg2
(for attempt in 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20; do
    ping -c 1 -W 1 198.19.9.250 > /dev/null 2>&1
    sleep 0.5
done) &
NO_PEER_PINGS=$!
await 20 'interface_field wg0 diagnosis.*.code' '["no_peer_route"]' || true
check diagnosis_no_peer_route "$(interface_field wg0 diagnosis.*.code)" '["no_peer_route"]'
wait "$NO_PEER_PINGS"

# The outside-in probe against kernel WireGuard: a monitoring peer the gateway knows, from
# the peer's namespace, in user space; and with a key that is not the gateway's, it fails.
wg genkey > /tmp/monitor.key
MONITOR_PUB=$(wg pubkey < /tmp/monitor.key)
wg set wg0 peer "$MONITOR_PUB" allowed-ips 198.19.9.6/32 || fail "wg set (monitor)"
in_peer wgtel probe --endpoint 198.18.9.1:51820 --peer-public-key "$GATEWAY_PUB" \
    --private-key-file /tmp/monitor.key --inner-target 198.19.9.1 --inner-source 198.19.9.6 \
    --count 3 --timeout 10s > /tmp/probe.txt 2>&1
check probe_exit "$?" 0
check probe_echoes "$(tail -n 1 /tmp/probe.txt)" "3 echoes, 3 replies, 0% loss"
in_peer wgtel probe --endpoint 198.18.9.1:51820 --peer-public-key "$PEER_PUB" \
    --private-key-file /tmp/monitor.key --timeout 3s > /tmp/probe-wrong.txt 2>&1
check probe_wrong_key_exit "$?" 1
if grep -q "$(cat /tmp/monitor.key)" /tmp/probe.txt /tmp/probe-wrong.txt /tmp/wgtel.log; then
    check probe_key_printed yes no
fi
cat /tmp/probe.txt

BPF_RUNNING=$(wgtel-vm-check bpf-objects)
kill -TERM "$WGTEL"
wait "$WGTEL"
status=$?
[ "$status" -eq 0 ] || errors="$errors wgtel-exit-status-$status"
echo "wgtel-vm: wgtel exited with $status"
# Nothing may stay attached after wgtel exits (clsact qdisc and filters on 6.1; tcx links
# end with the process).
for dev in wg0 wg1 veth0; do
    left="$(tc filter show dev "$dev" ingress)$(tc filter show dev "$dev" egress)"
    left="$left$(tc qdisc show dev "$dev" | grep clsact)"
    if [ -n "$left" ]; then
        echo "wgtel-vm: FAIL left attached on $dev after exit: $left"
        errors="$errors left-attached-$dev"
    else
        echo "wgtel-vm: ok   nothing left attached on $dev"
    fi
done

# Nor may any BPF program, link (tcx, the raw tracepoint) or map outlive it: the kernel holds
# what it held before wgtel started (maps go after an RCU grace period: a few tries).
tries=0
until [ "$(wgtel-vm-check bpf-objects)" = "$BPF_BEFORE" ] || [ "$tries" -ge 20 ]; do
    tries=$((tries + 1))
    sleep 0.5
done
echo "wgtel-vm: BPF objects before wgtel: $BPF_BEFORE; while it ran: $BPF_RUNNING"
# BPF links while it ran: the kfree_skb raw tracepoint, and with tcx two per interface (wg0,
# wg1, veth0); clsact filters are not links.
if [ "$TCX" -eq 1 ]; then WANT_LINKS=7; else WANT_LINKS=1; fi
check bpf_links_while_running "$(echo "$BPF_RUNNING" | sed 's/.*links \([0-9]*\).*/\1/')" \
    "$WANT_LINKS"
check bpf_objects_after_exit "$(wgtel-vm-check bpf-objects)" "$BPF_BEFORE"

# Debug mode: the programs with their log statements load on this kernel too, and a 3-byte
# datagram to the gateway's WireGuard port is logged once.
wgtel run --debug-ebpf --interval 500ms --listen 127.0.0.1:9587 > /tmp/wgtel-debug.log 2>&1 &
WGTEL=$!
tries=0
until grep -q "watching underlay veth0" /tmp/wgtel-debug.log; do
    tries=$((tries + 1))
    [ "$tries" -le 240 ] || { cat /tmp/wgtel-debug.log; fail "wgtel --debug-ebpf did not attach to veth0 within 120 s"; }
    kill -0 "$WGTEL" 2>/dev/null || { cat /tmp/wgtel-debug.log; fail "wgtel --debug-ebpf exited"; }
    sleep 0.5
done
in_peer wgtel-vm-check udp 198.18.9.1:51820 abc || fail "sending the 3-byte datagram"
sleep 2
kill -TERM "$WGTEL"
wait "$WGTEL"
check debug_ebpf_line "$(grep -c 'underlay: a 3-byte UDP payload received on WireGuard port 51820 is no WireGuard message' /tmp/wgtel-debug.log)" 1

# Another network namespace: the peer's own kernel WireGuard (also named wg0) watched with
# `--netns peer` from the root namespace, read over netlink inside that namespace. 20 pings:
# exactly 20 packets each way on the peer namespace's peer (the gateway's key), labelled with
# the namespace; the root's wg0 keeps no label; nothing left attached in either afterwards.
wgtel run --netns peer --interval 500ms --listen 127.0.0.1:9587 > /tmp/wgtel-netns.log 2>&1 &
WGTEL=$!
tries=0
until wget -qO- "$API/api/v1/peers" 2>/dev/null | grep -q "$GATEWAY_PUB"; do
    tries=$((tries + 1))
    [ "$tries" -le 240 ] || { cat /tmp/wgtel-netns.log; fail "wgtel --netns peer did not list the peer namespace's wg0 within 120 s"; }
    kill -0 "$WGTEL" 2>/dev/null || { cat /tmp/wgtel-netns.log; fail "wgtel --netns peer exited"; }
    sleep 0.5
done
await 20 'peer_field "$GATEWAY_PUB" netns' '"peer"' \
    || { cat /tmp/wgtel-netns.log; fail "the peer namespace's wg0 is not labelled peer"; }
NETNS_RX=$(peer_field "$GATEWAY_PUB" rx_packets)
NETNS_TX=$(peer_field "$GATEWAY_PUB" tx_packets)
ping -c 20 -i 0.05 -W 5 198.19.9.2 > /tmp/ping-netns.txt 2>&1
grep -q "20 packets transmitted, 20 packets received" /tmp/ping-netns.txt \
    || { cat /tmp/ping-netns.txt; fail "pings for --netns lost packets"; }
await 20 'peer_field "$GATEWAY_PUB" tx_packets' "$((NETNS_TX + 20))" || true
check netns_peer_rx "$(peer_field "$GATEWAY_PUB" rx_packets)" "$((NETNS_RX + 20))"
check netns_peer_tx "$(peer_field "$GATEWAY_PUB" tx_packets)" "$((NETNS_TX + 20))"
check netns_root_unlabelled "$(peer_field "$PEER_PUB" netns)" missing
kill -TERM "$WGTEL"
wait "$WGTEL"
check netns_exit_status "$?" 0
left="$(in_peer tc filter show dev wg0 ingress)$(in_peer tc filter show dev wg0 egress)"
left="$left$(in_peer tc qdisc show dev wg0 | grep clsact)"
check netns_nothing_left_in_peer "${left:-none}" none
tries=0
until [ "$(wgtel-vm-check bpf-objects)" = "$BPF_BEFORE" ] || [ "$tries" -ge 20 ]; do
    tries=$((tries + 1))
    sleep 0.5
done
check netns_bpf_objects_after_exit "$(wgtel-vm-check bpf-objects)" "$BPF_BEFORE"

[ -z "$errors" ] || fail "mismatched:$errors"
echo "WGTEL-VM: PASS"
