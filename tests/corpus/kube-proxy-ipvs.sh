# kube-proxy's IPVS mode, its filter rules for one ClusterIP Service (kube-system/kube-dns,
# 10.96.0.10, UDP 53): the ipsets it keeps and the INPUT access filter that rejects new
# connections to a Service address on ports no Service has (kubernetes/kubernetes
# pkg/proxy/ipvs/proxier.go: iptablesJumpChain's "kubernetes ipvs access filter", and the
# KUBE-IPVS-FILTER rules written in syncProxyRules, "to prevent access to ports on the host
# through VIP addresses", kubernetes#72236; set types from pkg/proxy/ipvs/ipset.go). The
# Service address is on kube-ipvs0 as kube-proxy puts it there. One command per line.
ip link add kube-ipvs0 type bridge
ip addr add 10.96.0.10/32 dev kube-ipvs0
ip link set kube-ipvs0 up
ipset create KUBE-LOAD-BALANCER hash:ip,port
ipset create KUBE-CLUSTER-IP hash:ip,port
ipset create KUBE-EXTERNAL-IP hash:ip,port
ipset create KUBE-EXTERNAL-IP-LOCAL hash:ip,port
ipset create KUBE-HEALTH-CHECK-NODE-PORT bitmap:port range 0-65535
ipset create KUBE-IPVS-IPS hash:ip
ipset add KUBE-CLUSTER-IP 10.96.0.10,udp:53
ipset add KUBE-IPVS-IPS 10.96.0.10
iptables -N KUBE-IPVS-FILTER
iptables -A INPUT -m comment --comment "kubernetes ipvs access filter" -j KUBE-IPVS-FILTER
iptables -A KUBE-IPVS-FILTER -m set --match-set KUBE-LOAD-BALANCER dst,dst -j RETURN
iptables -A KUBE-IPVS-FILTER -m set --match-set KUBE-CLUSTER-IP dst,dst -j RETURN
iptables -A KUBE-IPVS-FILTER -m set --match-set KUBE-EXTERNAL-IP dst,dst -j RETURN
iptables -A KUBE-IPVS-FILTER -m set --match-set KUBE-EXTERNAL-IP-LOCAL dst,dst -j RETURN
iptables -A KUBE-IPVS-FILTER -m set --match-set KUBE-HEALTH-CHECK-NODE-PORT dst -j RETURN
iptables -A KUBE-IPVS-FILTER -m conntrack --ctstate NEW -m set --match-set KUBE-IPVS-IPS dst -j REJECT
