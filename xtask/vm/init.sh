#!/bin/busybox sh
# /init of the `cargo xtask vm-test` guest (built by xtask/src/vmtest.rs).
#
# Replays the incident on loopback: an iptables DROP rule for TCP 1024-65535 (and UDP 5044)
# in OUTPUT, with iptables-nft, with iptables-legacy, with native nft (an inet table, a user
# chain), with iptables-nft again through the oldest kernels' path (classic tracepoint,
# perf buffers), and with attempts counted, each with `droptrace watch --json` running;
# then `droptrace doctor` (every program), `droptrace inventory` and `droptrace audit` of
# live traffic. Everything the host reads is a line on the serial
# console starting with "VMTEST-"; the guest then powers off. If this script dies, the kernel
# panics and reboots, and qemu (-no-reboot) exits: the host sees no VMTEST-DONE.
export PATH=/usr/sbin:/usr/bin:/sbin:/bin

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t debugfs debugfs /sys/kernel/debug
mount -t tracefs tracefs /sys/kernel/tracing
mount -t bpf bpf /sys/fs/bpf
mount -t tmpfs tmpfs /run # iptables-legacy takes its lock in /run
mount -t tmpfs tmpfs /tmp
# Kernel messages on the console would cut into the report lines.
echo 1 >/proc/sys/kernel/printk

report() { echo "VMTEST-$*"; }

# Running, and not a zombie waiting for `wait`.
alive() { [ -r "/proc/$1/status" ] && ! grep -q '^State:[[:space:]]*Z' "/proc/$1/status"; }

report "KERNEL $(uname -r)"

ip link set lo up
ip addr add 203.0.113.10/32 dev lo

# add_rules TOOL: the incident's rules, with iptables(-nft|-legacy) or, for `nft`, the same
# drops in a native inet table at a non-default priority, behind a jump to a user chain.
add_rules() {
	case $1 in
	nft)
		nft add table inet fw &&
			nft add chain inet fw out '{ type filter hook output priority -10; }' &&
			nft add chain inet fw hardening &&
			nft add rule inet fw out jump hardening &&
			nft add rule inet fw hardening tcp dport 1024-65535 counter drop &&
			nft add rule inet fw hardening udp dport 5044 counter drop
		;;
	*)
		$1 -A OUTPUT -p tcp --dport 1024:65535 -j DROP &&
			$1 -A OUTPUT -p udp --dport 5044 -j DROP
		;;
	esac
}

# run_case BACKEND IPTABLES [FLAGS]: rules, droptrace (with FLAGS), traffic, report, flush.
run_case() {
	backend=$1 ipt=$2 flags=$3
	out=/tmp/$backend.json err=/tmp/$backend.err
	if [ -n "$not_started" ]; then
		# Loading and attaching do not depend on the backend: a second try would only spend
		# another minute or two of emulated verifier time. The table says why.
		report "STDERR $backend vm-test: skipped, droptrace did not start with $not_started"
		report "EXIT $backend skipped"
		return
	fi
	if ! add_rules "$ipt" >/tmp/$backend.ipt 2>&1; then
		while IFS= read -r line; do report "STDERR $backend $ipt: $line"; done </tmp/$backend.ipt
		report "EXIT $backend rules"
		return
	fi

	# shellcheck disable=SC2086 # FLAGS are words
	droptrace watch --json --duration 6s $flags >"$out" 2>"$err" &
	pid=$!
	started=$(date +%s)
	# Loading and attaching under software emulation takes seconds; a verifier that gives
	# up after a million instructions took 1.5 min on 6.1 and 3 min on 5.10. Stop waiting
	# after about 100 s: GUEST_TIMEOUT in vmtest.rs leaves room for two such waits.
	n=0
	while [ $n -lt 1000 ] && alive $pid && ! grep -qs '"type":"start"' "$out"; do
		usleep 100000
		n=$((n + 1))
	done
	if grep -qs '"type":"start"' "$out"; then
		# The payment gateway (TCP 8443) and the log aggregator (UDP 5044) of the incident.
		nc -w 1 203.0.113.10 8443 </dev/null >/dev/null 2>&1
		timeout 3 tftp -g -r probe -l /tmp/probe 203.0.113.10 5044 >/dev/null 2>&1
	else
		not_started=$backend
		if alive $pid; then
			# utime and stime, in ticks of 10 ms: time in the kernel is the verifier.
			set -- $(cut -d' ' -f14,15 /proc/$pid/stat)
			report "STDERR $backend vm-test: no start line after 100 s" \
				"(CPU: $(($1 / 100)) s user, $(($2 / 100)) s kernel), stopping droptrace"
			kill $pid
		fi
	fi
	wait $pid
	code=$?

	while IFS= read -r line; do report "JSON $backend $line"; done <"$out"
	while IFS= read -r line; do report "STDERR $backend $line"; done <"$err"
	report "EXIT $backend $code $(($(date +%s) - started))s"

	case $ipt in
	iptables-nft | nft) nft flush ruleset ;;
	iptables-legacy) $ipt -F OUTPUT ;;
	esac
}

# Every program droptrace ships, loaded and unloaded by `droptrace doctor`: one line of JSON.
doctor_case() {
	droptrace doctor --json >/tmp/doctor.json 2>/tmp/doctor.err
	code=$?
	report "DOCTOR $code $(tr -d '\n' </tmp/doctor.json)"
	while IFS= read -r line; do report "STDERR doctor $line"; done </tmp/doctor.err
}

# dial_while TAG NAME ARGS...: `droptrace ARGS --json` in the background; once it says it
# watches, the payment gateway is dialled once; its exit code and JSON report, on one line,
# as VMTEST-TAG (the inventory's programs say "inventory of outbound flows" when attached).
dial_while() {
	tag=$1 name=$2
	shift 2
	droptrace "$@" --json >/tmp/$name.json 2>/tmp/$name.err &
	pid=$!
	n=0
	while [ $n -lt 1000 ] && alive $pid && ! grep -qs 'inventory of outbound flows' /tmp/$name.err; do
		usleep 100000
		n=$((n + 1))
	done
	nc -w 1 203.0.113.10 8443 </dev/null >/dev/null 2>&1
	wait $pid
	code=$?
	report "$tag $code $(tr -d '\n' </tmp/$name.json)"
	while IFS= read -r line; do report "STDERR $name $line"; done </tmp/$name.err
}

# `droptrace inventory` while the payment gateway is dialled through the incident's rule.
inventory_case() {
	iptables-nft -A OUTPUT -p tcp --dport 1024:65535 -j DROP
	dial_while INVENTORY inventory inventory --duration 4s
	nft flush ruleset
}

# `droptrace audit` of live traffic against a proposed ruleset that would drop the payment
# gateway (no rule in the guest drops it).
audit_case() {
	printf '*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n-A OUTPUT -p tcp --dport 8443 -j DROP\nCOMMIT\n' >/tmp/proposed.rules
	dial_while AUDIT audit audit --ruleset /tmp/proposed.rules --duration 4s
}

# droptrace's programs loaded in the kernel (names from BTF, or cut to 15 characters).
our_programs() {
	bpftool prog show 2>/dev/null |
		grep -cE ' name (kfree_skb|kfree_skb_tp|nft_do_chain_en(try)?|xt_do_table_ent(ry)?|do_table_return) '
}

# kill -9 while capturing, with the rule engines probed: nothing may stay in the kernel.
# Reports how many of droptrace's programs were loaded during the capture and after.
kill9_case() {
	iptables-legacy -A OUTPUT -p tcp --dport 1024:65535 -j DROP # ip_tables probed too
	droptrace watch --json >/tmp/kill9.json 2>/tmp/kill9.err &
	pid=$!
	n=0
	while [ $n -lt 1000 ] && alive $pid && ! grep -qs '"type":"start"' /tmp/kill9.json; do
		usleep 100000
		n=$((n + 1))
	done
	during=$(our_programs)
	kill -9 $pid
	wait $pid
	# Programs are freed once their last reference goes, after an RCU grace period.
	n=0
	while [ $n -lt 50 ] && [ "$(our_programs)" != 0 ]; do
		usleep 100000
		n=$((n + 1))
	done
	report "KILL9 $during $(our_programs)"
	iptables-legacy -F OUTPUT
}

run_case nft iptables-nft
run_case legacy iptables-legacy
# With a port filter: the kernel program then tests ports on the headers' first bytes
# before copying the rest (drops.rs `ruled_out_early`), a branch the verifier only walks
# when a filter is set. Both ports of the incident are inside the range.
run_case nftables nft "--dport 5000-9000"
# The oldest kernels' path on these: classic tracepoint, records through perf buffers.
run_case nft-perf iptables-nft "--attach tracepoint --buffer perf --dport 5000-9000"
# The incident with attempts counted beside drops (the inventory's programs and
# attempt_passed, loaded with the drop program).
run_case attempts iptables-nft "--attempts"
kill9_case
doctor_case
inventory_case
audit_case

report DONE
poweroff -f
