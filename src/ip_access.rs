//! Tyk's IP lists: `allowed_ips` (with `enable_ip_whitelisting`) lets only the addresses and
//! ranges it names in, `blacklisted_ips` (with `enable_ip_blacklisting`) keeps out those it
//! names; IPv4 and IPv6, single addresses or CIDR ranges, compiled once. The address checked
//! is the one `client_ip` finds, as Tyk's `RealIP`.

use std::net::IpAddr;

use ipnet::IpNet;
use serde_json::{Map, Value};

use crate::version::{InvalidField, invalid};

/// An API's IP lists.
#[derive(Debug)]
pub struct IpAccess {
    /// `None`: every address may call (no allow list in force).
    allowed: Option<Box<[IpNet]>>,
    blocked: Box<[IpNet]>,
}

impl IpAccess {
    /// The lists a definition puts in force, as Tyk decides it: a list is used when it has
    /// entries and either its `enable_…` flag is on or `ip_access_control_disabled` is off.
    pub fn compile(definition: &Map<String, Value>) -> Result<Option<Self>, InvalidField> {
        let flag = |name: &str| definition.get(name).and_then(Value::as_bool) == Some(true);
        let disabled = flag("ip_access_control_disabled");
        let allowed = ranges(definition, "allowed_ips")?
            .filter(|_| !disabled || flag("enable_ip_whitelisting"));
        let blocked = ranges(definition, "blacklisted_ips")?
            .filter(|_| !disabled || flag("enable_ip_blacklisting"))
            .unwrap_or_default();
        if allowed.is_none() && blocked.is_empty() {
            return Ok(None);
        }
        Ok(Some(Self { allowed, blocked }))
    }

    /// Whether `client` may call; `None` (no address could be found) is allowed only when no
    /// allow list is in force.
    pub fn admits(&self, client: Option<IpAddr>) -> bool {
        let client = client.map(|ip| ip.to_canonical());
        let within = |nets: &[IpNet]| client.is_some_and(|ip| nets.iter().any(|n| n.contains(&ip)));
        if let Some(allowed) = &self.allowed
            && !within(allowed)
        {
            return false;
        }
        !within(&self.blocked)
    }
}

/// A list's entries as ranges (an address is a range of one); `None` when it has none.
fn ranges(
    definition: &Map<String, Value>,
    field: &str,
) -> Result<Option<Box<[IpNet]>>, InvalidField> {
    let Some(entries) = definition.get(field).filter(|v| !v.is_null()) else {
        return Ok(None);
    };
    let Some(entries) = entries.as_array() else {
        return Err(invalid(
            field,
            "must be a list of addresses and CIDR ranges",
        ));
    };
    let mut nets = Vec::with_capacity(entries.len());
    for (i, entry) in entries.iter().enumerate() {
        let at = format!("{field}[{i}]");
        let text = entry
            .as_str()
            .ok_or_else(|| invalid(&at, "must be a string"))?
            .trim();
        let net = match text.parse::<IpNet>() {
            Ok(net) => net,
            Err(_) => match text.parse::<IpAddr>() {
                Ok(ip) => IpNet::from(ip.to_canonical()),
                Err(_) => {
                    return Err(invalid(
                        &at,
                        format!("{text:?} is not an IP address or CIDR range"),
                    ));
                }
            },
        };
        nets.push(net);
    }
    Ok((!nets.is_empty()).then(|| nets.into()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn access(definition: Value) -> Option<IpAccess> {
        IpAccess::compile(definition.as_object().unwrap()).unwrap()
    }

    fn ip(s: &str) -> Option<IpAddr> {
        Some(s.parse().unwrap())
    }

    #[test]
    fn allow_and_block_lists_take_addresses_and_ranges_of_both_families() {
        let lists = access(json!({
            "enable_ip_whitelisting": true,
            "allowed_ips": ["10.0.0.0/8", "192.168.1.7", "2001:db8::/32"],
            "enable_ip_blacklisting": true,
            "blacklisted_ips": ["10.9.0.0/16", "2001:db8::bad"],
        }))
        .unwrap();
        assert!(lists.admits(ip("10.1.2.3")));
        assert!(lists.admits(ip("::ffff:10.1.2.3")), "IPv4-mapped");
        assert!(lists.admits(ip("192.168.1.7")));
        assert!(!lists.admits(ip("192.168.1.8")));
        assert!(!lists.admits(ip("10.9.1.1")), "blocked within the allowed");
        assert!(lists.admits(ip("2001:db8::1")));
        assert!(!lists.admits(ip("2001:db8::bad")));
        assert!(!lists.admits(None), "no address under an allow list");
    }

    #[test]
    fn a_list_is_in_force_as_tyk_decides() {
        assert!(access(json!({"allowed_ips": []})).is_none());
        // Tyk applies a non-empty list unless access control is switched off.
        let on = access(json!({"allowed_ips": ["1.1.1.1"]})).unwrap();
        assert!(!on.admits(ip("2.2.2.2")));
        assert!(
            access(json!({"allowed_ips": ["1.1.1.1"], "ip_access_control_disabled": true}))
                .is_none()
        );
        let blocked = access(json!({"blacklisted_ips": ["1.1.1.1"]})).unwrap();
        assert!(!blocked.admits(ip("1.1.1.1")));
        assert!(blocked.admits(None));
    }

    #[test]
    fn a_bad_entry_names_its_place() {
        let e = IpAccess::compile(
            json!({"allowed_ips": ["1.1.1.1", "10.0.0.0/33"]})
                .as_object()
                .unwrap(),
        )
        .unwrap_err();
        assert_eq!(e.field, "allowed_ips[1]");
    }
}
