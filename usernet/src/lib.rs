//! `usernet`: user-mode NAT networking.
//!
//! Owns a frames-in/frames-out NAT: a TCP/IP stack facing the VM, host sockets on the
//! other side, DHCP, DNS forwarding, TCP/UDP/ICMP NAT, a gateway that reaches the host's
//! loopback and inbound port forwards. Transports: in-process virtio-net, QEMU's
//! `-netdev stream` socket and a TAP device.
//!
//! Status: not built yet (see the README status table).
