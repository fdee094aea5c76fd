//! Lab configs with a group of more VIPs than the default two.
//!
//! A group of `n` VIPs has `n / 2` on each link, from `.100` upwards in the
//! link's /24 (`.100` is the lab's usual VIP), so it never touches the
//! switch (`.1`), the servers (`.11`, `.12`) or the client (`.50`): at most
//! 128 per link (`.100` to `.227`), 256 in all (the agent's limit).

use std::net::Ipv4Addr;

use anyhow::{bail, Result};

use crate::topology::Link;
use crate::{Overrides, PREFIX_LEN};

/// The first host number of a group on each link.
const FIRST_HOST: u8 = 100;
/// The most VIPs one link's subnet gives a group (`.100` to `.227`).
pub const MAX_PER_LINK: usize = 128;

/// The VIPs of a group of `n` (even, 2 to 256), in config order: the inside
/// link's first, then the outside link's, so the last VIP of the config
/// (the last the agent asks for) is on the outside link, where the client
/// is. A group of 2 is the lab's default pair of VIPs.
pub fn vip_group(n: usize) -> Result<Vec<(Link, Ipv4Addr)>> {
    if n < 2 || !n.is_multiple_of(2) || n / 2 > MAX_PER_LINK {
        bail!(
            "a VIP group has an even number of VIPs from 2 to {}, got {n}",
            2 * MAX_PER_LINK
        );
    }
    let per_link = n / 2;
    let mut out = Vec::with_capacity(n);
    for link in [Link::Inside, Link::Outside] {
        let [a, b, c, _] = link.subnet().octets();
        for i in 0..per_link {
            // per_link <= 128, so the host number stays <= 227.
            out.push((link, Ipv4Addr::new(a, b, c, FIRST_HOST + i as u8)));
        }
    }
    Ok(out)
}

/// `base` plus the change that replaces the agent's `[[vip]]` list with `group`.
pub fn vip_overrides(base: Overrides, group: &[(Link, Ipv4Addr)]) -> Overrides {
    let vips: Vec<toml::Value> = group
        .iter()
        .map(|(link, ip)| {
            let mut t = toml::Table::new();
            t.insert(
                "address".into(),
                toml::Value::String(format!("{ip}/{PREFIX_LEN}")),
            );
            t.insert(
                "interface".into(),
                toml::Value::String(link.ifname().into()),
            );
            toml::Value::Table(t)
        })
        .collect();
    base.set("vip", toml::Value::Array(vips))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_stay_clear_of_the_lab_addresses() {
        let g = vip_group(256).unwrap();
        assert_eq!(g.len(), 256);
        assert_eq!(g[0], (Link::Inside, Ipv4Addr::new(203, 0, 113, 100)));
        assert_eq!(g[255], (Link::Outside, Ipv4Addr::new(198, 51, 100, 227)));
        for (_, ip) in &g {
            assert!(![1, 11, 12, 50, 0, 255].contains(&ip.octets()[3]));
        }
        let two = vip_group(2).unwrap();
        assert_eq!(
            two,
            vec![
                (Link::Inside, crate::INSIDE_VIP),
                (Link::Outside, crate::OUTSIDE_VIP)
            ]
        );
        assert!(vip_group(3).is_err() && vip_group(258).is_err() && vip_group(0).is_err());
    }

    #[test]
    fn overrides_replace_the_vip_list() {
        let mut doc: toml::Table = "[[vip]]\naddress = \"1.2.3.4/24\"\ninterface = \"eth0\"\n"
            .parse()
            .unwrap();
        vip_overrides(Overrides::new(), &vip_group(4).unwrap())
            .apply(&mut doc)
            .unwrap();
        let v = doc["vip"].as_array().unwrap();
        assert_eq!(v.len(), 4);
        assert_eq!(v[3]["address"].as_str(), Some("198.51.100.101/24"));
        assert_eq!(v[0]["interface"].as_str(), Some("eth1"));
    }
}
