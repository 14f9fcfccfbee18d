# fail2ban's iptables action with type multiport (fail2ban/fail2ban
# config/action.d/iptables.conf @ 5e5e2d5a, as iptables-multiport.conf selects it; defaults:
# chain INPUT, port ssh, protocol tcp, blocktype REJECT --reject-with
# icmp-port-unreachable, returntype RETURN) expanded for the sshd jail, IPv4 and IPv6
# (`[Init?family=inet6]`): actionstart's chain, return and jump for each family, then
# actionban for one address of each. {BANNED4} and {BANNED6} are filled in by the test.
iptables -w -N f2b-sshd
iptables -w -A f2b-sshd -j RETURN
iptables -w -I INPUT -p tcp -m multiport --dports ssh -j f2b-sshd
ip6tables -w -N f2b-sshd
ip6tables -w -A f2b-sshd -j RETURN
ip6tables -w -I INPUT -p tcp -m multiport --dports ssh -j f2b-sshd
iptables -w -I f2b-sshd 1 -s {BANNED4} -j REJECT --reject-with icmp-port-unreachable
ip6tables -w -I f2b-sshd 1 -s {BANNED6} -j REJECT --reject-with icmp6-port-unreachable
