#!/bin/sh
# The wgtel VM test (busybox sh), run by /init on a kernel that has the WireGuard module.
#
# The root network namespace is the gateway, the namespace `peer` its one peer, joined by a
# veth pair (198.18.9.1/24, 198.18.9.2/24). Each side has a kernel WireGuard interface wg0
# (tunnel 198.19.9.1/24 and 198.19.9.2/32). wgtel runs on the gateway and finds wg0 over
# generic netlink. Checks:
# - 50 pings through the tunnel count exactly 50 tx and 50 rx packets for the peer;
# - endpoint, AllowedIPs, byte counters and handshake age agree with `wg show`;
# - 7 pings to 198.19.9.250 (routed into wg0 by the /24, no peer's AllowedIPs) count as
#   7 `no_peer` drops of the interface;
# - wgtel exits cleanly on SIGTERM and leaves no qdisc or filter attached.
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

# The value of JSON key $1 (a number, string or flat array) in the document on stdin.
json_field() {
    tr -d ' \n' | grep -o "\"$1\":\(\[[^]]*\]\|\"[^\"]*\"\|[-0-9.a-z]*\)" | head -n 1 \
        | sed "s/^\"$1\"://"
}

icmp_counter() {
    # /proc/net/snmp: a header line "Icmp: InMsgs ..." then the values line.
    awk -v name="$1" '/^Icmp:/ { if (!seen) { for (i = 1; i <= NF; i++) col[$i] = i; seen = 1 }
        else { print $col[name] } }' /proc/net/snmp
}

set -u

ip netns add peer || fail "ip netns add peer"
ip link add veth0 type veth peer name veth1 || fail "veth"
ip link set veth1 netns peer || fail "moving veth1"
ip addr add 198.18.9.1/24 dev veth0
ip link set veth0 up
ip -n peer addr add 198.18.9.2/24 dev veth1
ip -n peer link set veth1 up
ip -n peer link set lo up

umask 077
wg genkey > /tmp/gateway.key || fail "wg genkey"
wg genkey > /tmp/peer.key || fail "wg genkey"
GATEWAY_PUB=$(wg pubkey < /tmp/gateway.key)
PEER_PUB=$(wg pubkey < /tmp/peer.key)

ip link add wg0 type wireguard || fail "ip link add wg0 type wireguard"
wg set wg0 private-key /tmp/gateway.key listen-port 51820 \
    peer "$PEER_PUB" endpoint 198.18.9.2:51820 allowed-ips 198.19.9.2/32 || fail "wg set (gateway)"
ip addr add 198.19.9.1/24 dev wg0
ip link set wg0 up

ip -n peer link add wg0 type wireguard || fail "ip link add wg0 (peer)"
in_peer wg set wg0 private-key /tmp/peer.key listen-port 51820 \
    peer "$GATEWAY_PUB" endpoint 198.18.9.1:51820 allowed-ips 198.19.9.1/32 \
    || fail "wg set (peer)"
ip -n peer addr add 198.19.9.2/32 dev wg0
ip -n peer link set wg0 up
ip -n peer route add 198.19.9.1/32 dev wg0

# One ping for the handshake, before wgtel starts counting.
ping -c 1 -W 5 198.19.9.2 > /dev/null || fail "no handshake: the first ping through wg0 failed"
echo "wgtel-vm: tunnel up"

wgtel run --interval 500ms --listen 127.0.0.1:9587 > /tmp/wgtel.log 2>&1 &
WGTEL=$!
tries=0
until wget -qO- "$API/api/v1/peers" 2>/dev/null | grep -q "$PEER_PUB"; do
    tries=$((tries + 1))
    [ "$tries" -le 240 ] || fail "wgtel did not list the peer within 120 s"
    kill -0 "$WGTEL" 2>/dev/null || fail "wgtel exited"
    sleep 0.5
done
until wget -qO- "$API/healthz" > /dev/null 2>&1; do
    tries=$((tries + 1))
    [ "$tries" -le 240 ] || fail "wgtel /healthz not ready within 120 s"
    sleep 0.5
done
echo "wgtel-vm: wgtel ready after ~$((tries / 2)) s"

ping -c 50 -i 0.05 -W 5 198.19.9.2 > /tmp/ping.txt 2>&1
grep -q "50 packets transmitted, 50 packets received" /tmp/ping.txt \
    || { cat /tmp/ping.txt; fail "ping through wg0 lost packets"; }

UNREACH_IN=$(icmp_counter InDestUnreachs)
UNREACH_OUT=$(icmp_counter OutDestUnreachs)
# The kernel module refuses a packet without a peer: sendto fails with ENOKEY ("Required key
# not available"), which ends busybox's ping after its first packet, and answers with an
# ICMP host unreachable. Hence seven single pings.
for attempt in 1 2 3 4 5 6 7; do
    ping -c 1 -W 1 198.19.9.250 >> /tmp/ping-no-peer.txt 2>&1
done
echo "wgtel-vm: 7 x ping -c 1 198.19.9.250 (no peer):"
sort /tmp/ping-no-peer.txt | uniq -c | sed 's/^/wgtel-vm:   /'
echo "wgtel-vm: ICMP InDestUnreachs +$(($(icmp_counter InDestUnreachs) - UNREACH_IN))," \
    "OutDestUnreachs +$(($(icmp_counter OutDestUnreachs) - UNREACH_OUT)) during it"

# Four collection intervals, so that the snapshot holds every packet.
sleep 2
PEERS=$(wget -qO- "$API/api/v1/peers") || fail "GET /api/v1/peers"
INTERFACES=$(wget -qO- "$API/api/v1/interfaces") || fail "GET /api/v1/interfaces"
NOW=$(date +%s)
echo "wgtel-vm: /api/v1/peers: $PEERS"
echo "wgtel-vm: /api/v1/interfaces: $INTERFACES"
echo "wgtel-vm: wg show wg0 transfer: $(wg show wg0 transfer)"

errors=""
check() { # name, got, want
    if [ "$2" = "$3" ]; then
        echo "wgtel-vm: ok   $1 = $2"
    else
        echo "wgtel-vm: FAIL $1 = $2, want $3"
        errors="$errors $1"
    fi
}

check public_key "$(echo "$PEERS" | json_field public_key)" "\"$PEER_PUB\""
check tx_packets "$(echo "$PEERS" | json_field tx_packets)" 50
check rx_packets "$(echo "$PEERS" | json_field rx_packets)" 50
check endpoint "$(echo "$PEERS" | json_field endpoint)" '"198.18.9.2:51820"'
check allowed_ips "$(echo "$PEERS" | json_field allowed_ips)" '["198.19.9.2/32"]'
TRANSFER=$(wg show wg0 transfer)
check rx_bytes "$(echo "$PEERS" | json_field rx_bytes)" "$(echo "$TRANSFER" | awk '{print $2}')"
check tx_bytes "$(echo "$PEERS" | json_field tx_bytes)" "$(echo "$TRANSFER" | awk '{print $3}')"
check implementation "$(echo "$INTERFACES" | json_field implementation)" '"kernel"'
check no_peer "$(echo "$INTERFACES" | json_field no_peer)" 7

AGE=$(echo "$PEERS" | json_field last_handshake_seconds_ago | sed 's/\..*//')
HANDSHAKE=$(wg show wg0 latest-handshakes | awk '{print $2}')
WANT_AGE=$((NOW - HANDSHAKE))
case "$AGE" in
    '' | null | *[!0-9]*) check last_handshake_seconds_ago "$AGE" "$WANT_AGE" ;;
    *)
        if [ $((AGE - WANT_AGE)) -ge -3 ] && [ $((AGE - WANT_AGE)) -le 3 ]; then
            echo "wgtel-vm: ok   last_handshake_seconds_ago = $AGE (wg show: $WANT_AGE)"
        else
            check last_handshake_seconds_ago "$AGE" "$WANT_AGE"
        fi
        ;;
esac

echo "wgtel-vm: attached on wg0: $(tc filter show dev wg0 ingress | head -n 1)"
kill -TERM "$WGTEL"
wait "$WGTEL"
status=$?
[ "$status" -eq 0 ] || errors="$errors wgtel-exit-status-$status"
echo "wgtel-vm: wgtel exited with $status"
# Nothing may stay attached after wgtel exits (kernel 6.1 has no tcx: clsact qdisc + filters).
for dev in wg0 veth0; do
    left="$(tc filter show dev "$dev" ingress)$(tc filter show dev "$dev" egress)"
    left="$left$(tc qdisc show dev "$dev" | grep clsact)"
    if [ -n "$left" ]; then
        echo "wgtel-vm: FAIL left attached on $dev after exit: $left"
        errors="$errors left-attached-$dev"
    else
        echo "wgtel-vm: ok   nothing left attached on $dev"
    fi
done

[ -z "$errors" ] || fail "mismatched:$errors"
echo "WGTEL-VM: PASS"
