//! Tyk's `domain` (with the gateway's `enable_custom_domains`): an API that names one is
//! served only to requests whose `Host` matches it, before the APIs that name none. A domain
//! is a host template as Tyk's router (gorilla/mux) reads it: literal text, `{name}` for one
//! label, `{name:regex}` for a regex; without a port it matches any port.

use regex::Regex;

/// A compiled `domain`.
#[derive(Debug)]
pub struct HostPattern {
    regex: Regex,
    /// The template names a port: the request's is compared too.
    with_port: bool,
}

impl HostPattern {
    /// Compiles `domain`; `Err` says why it is not a host template.
    pub fn compile(domain: &str) -> Result<Self, String> {
        let mut regex = String::from("(?i)^");
        let mut rest = domain;
        let mut literal = String::new();
        // The template without its variables, to look for a port in.
        let mut fixed = String::new();
        while let Some(open) = rest.find('{') {
            let close = rest[open..]
                .find('}')
                .map(|c| open + c)
                .ok_or_else(|| format!("{domain:?} has a '{{' without its '}}'"))?;
            literal.push_str(&rest[..open]);
            fixed.push_str(&rest[..open]);
            let variable = &rest[open + 1..close];
            regex.push_str(&regex::escape(&literal));
            literal.clear();
            match variable.split_once(':') {
                Some((_, pattern)) => {
                    regex.push_str("(?:");
                    regex.push_str(pattern);
                    regex.push(')');
                }
                None => regex.push_str("[^.]+"),
            }
            rest = &rest[close + 1..];
        }
        literal.push_str(rest);
        fixed.push_str(rest);
        regex.push_str(&regex::escape(&literal));
        regex.push('$');
        // A port follows the host, and an IPv6 address's colons sit within its brackets.
        let after_address = fixed.rsplit(']').next().unwrap_or(&fixed);
        let with_port = after_address.contains(':');
        let regex = Regex::new(&regex).map_err(|e| format!("{domain:?}: {e}"))?;
        Ok(Self { regex, with_port })
    }

    /// Whether a request's `Host` (`host[:port]`) matches.
    pub fn matches(&self, host: &str) -> bool {
        let host = if self.with_port {
            host
        } else {
            without_port(host)
        };
        self.regex.is_match(host)
    }
}

/// `host:port` without its port (`[::1]:80` → `[::1]`).
fn without_port(host: &str) -> &str {
    match host.rfind(':') {
        Some(at)
            if !host[at..].contains(']') && host[at + 1..].bytes().all(|b| b.is_ascii_digit()) =>
        {
            &host[..at]
        }
        _ => host,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literal_domains_match_any_port_and_any_case() {
        let p = HostPattern::compile("api.example.com").unwrap();
        assert!(p.matches("api.example.com"));
        assert!(p.matches("API.example.com:8080"));
        assert!(!p.matches("apixexample.com"), "dots are literal");
        assert!(!p.matches("other.example.com"));
        assert!(!p.matches("api.example.com.evil"));
        let with_port = HostPattern::compile("localhost:8080").unwrap();
        assert!(with_port.matches("localhost:8080"));
        assert!(!with_port.matches("localhost:9090"));
    }

    #[test]
    fn variables_match_a_label_or_their_regex() {
        let p = HostPattern::compile("{tenant}.example.com").unwrap();
        assert!(p.matches("acme.example.com"));
        assert!(!p.matches("a.b.example.com"), "one label");
        let p = HostPattern::compile("{tenant:[a-z]+-[0-9]+}.example.com").unwrap();
        assert!(p.matches("acme-1.example.com"));
        assert!(!p.matches("acme.example.com"));
        assert!(
            p.matches("acme-1.example.com:8080"),
            "a variable's colon is no port"
        );
        assert!(HostPattern::compile("{bad:(}.example.com").is_err());
        assert!(HostPattern::compile("{open.example.com").is_err());
        let v6 = HostPattern::compile("[::1]").unwrap();
        assert!(v6.matches("[::1]:8080"));
    }
}
