# fail2ban's iptables-ipset action (fail2ban/fail2ban config/action.d/iptables-ipset.conf,
# with iptables.conf's defaults: chain INPUT, blocktype REJECT --reject-with
# icmp-port-unreachable) expanded for the sshd jail on port 22, IPv4 and IPv6: actionstart,
# then actionban for one address of each family. {BANNED4} and {BANNED6} are filled in by the
# test.
ipset -exist create f2b-sshd hash:ip timeout 0 maxelem 65536
iptables -I INPUT -p tcp -m multiport --dports 22 -m set --match-set f2b-sshd src -j REJECT --reject-with icmp-port-unreachable
ipset -exist create f2b-sshd6 hash:ip timeout 0 maxelem 65536 family inet6
ip6tables -I INPUT -p tcp -m multiport --dports 22 -m set --match-set f2b-sshd6 src -j REJECT --reject-with icmp6-port-unreachable
ipset -exist add f2b-sshd {BANNED4} timeout 0
ipset -exist add f2b-sshd6 {BANNED6} timeout 0
