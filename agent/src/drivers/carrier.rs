//! Carrier of the links' interfaces, from rtnetlink link notifications.
//!
//! Carrier loss is instant evidence: a holder whose uplink cable is pulled
//! knows it the moment the kernel does, not a witness detection time later.
//! This driver only reports changes of "can this interface carry traffic"
//! for the monitored links; the election decides what they mean.

use std::io;

use futures::StreamExt;
use netlink_packet_route::link::{LinkAttribute, LinkFlags, LinkMessage, State};
use netlink_packet_route::RouteNetlinkMessage;
use rtnetlink::packet_core::NetlinkPayload;
use rtnetlink::MulticastGroup;

/// Link notifications of the calling thread's network namespace.
pub struct CarrierWatch {
    messages: futures::channel::mpsc::UnboundedReceiver<(
        rtnetlink::packet_core::NetlinkMessage<RouteNetlinkMessage>,
        rtnetlink::sys::SocketAddr,
    )>,
    /// Interface index of each link.
    ifindex: Vec<u32>,
    /// Last known carrier per link.
    carrier: Vec<Option<bool>>,
}

#[derive(Debug, thiserror::Error)]
#[error("cannot subscribe to link notifications (rtnetlink RTMGRP_LINK): {0}; ha-agent needs CAP_NET_ADMIN")]
pub struct CarrierError(#[source] io::Error);

impl CarrierWatch {
    /// Subscribes (the connection runs on the current tokio runtime).
    /// `ifindex`: the interface of each link; `initial`: their carrier now.
    pub fn open(ifindex: Vec<u32>, initial: Vec<bool>) -> Result<Self, CarrierError> {
        let (conn, _handle, messages) =
            rtnetlink::new_multicast_connection(&[MulticastGroup::Link]).map_err(CarrierError)?;
        tokio::spawn(conn);
        Ok(CarrierWatch {
            messages,
            carrier: initial.into_iter().map(Some).collect(),
            ifindex,
        })
    }

    /// The next change: (link, carrier). Pending forever if the
    /// notification socket closes (the kernel's timers still detect).
    pub async fn next(&mut self) -> (usize, bool) {
        loop {
            let Some((msg, _)) = self.messages.next().await else {
                return std::future::pending().await;
            };
            let NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(link)) = msg.payload
            else {
                continue;
            };
            let Some(i) = self.ifindex.iter().position(|x| *x == link.header.index) else {
                continue;
            };
            let up = carries(&link);
            if self.carrier[i] != Some(up) {
                self.carrier[i] = Some(up);
                return (i, up);
            }
        }
    }
}

/// Whether the interface can carry traffic: operationally up, or (drivers
/// without carrier reporting leave the state "unknown") administratively up
/// with the lower layer up.
pub fn carries(msg: &LinkMessage) -> bool {
    let state = msg
        .attributes
        .iter()
        .find_map(|a| match a {
            LinkAttribute::OperState(s) => Some(*s),
            _ => None,
        })
        .unwrap_or(State::Unknown);
    match state {
        State::Up => true,
        State::Unknown => msg
            .header
            .flags
            .contains(LinkFlags::Up | LinkFlags::LowerUp),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link(state: State, flags: LinkFlags) -> LinkMessage {
        let mut m = LinkMessage::default();
        m.header.flags = flags;
        m.attributes.push(LinkAttribute::OperState(state));
        m
    }

    #[test]
    fn drivers_without_carrier_reporting_are_judged_by_their_flags() {
        let up_lower = LinkFlags::Up | LinkFlags::LowerUp;
        assert!(carries(&link(State::Up, up_lower)));
        assert!(carries(&link(State::Unknown, up_lower)));
        assert!(!carries(&link(State::Unknown, LinkFlags::Up)));
        assert!(!carries(&link(State::Down, up_lower)));
        assert!(!carries(&link(State::LowerLayerDown, LinkFlags::Up)));
    }
}
