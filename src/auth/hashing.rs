//! Tyk's key hashing: the storage id of a key, generated keys and custom-key tokens, and the
//! order in which a presented key's stored forms are looked for.

use std::borrow::Cow;

use base64::Engine;
use sha2::Digest;

/// Tyk's key hash algorithms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HashAlgorithm {
    Murmur32,
    Murmur64,
    Murmur128,
    Sha256,
}

impl HashAlgorithm {
    fn from_name(name: &str) -> Option<Self> {
        match name {
            "murmur32" => Some(Self::Murmur32),
            "murmur64" => Some(Self::Murmur64),
            "murmur128" => Some(Self::Murmur128),
            "sha256" => Some(Self::Sha256),
            _ => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::Murmur32 => "murmur32",
            Self::Murmur64 => "murmur64",
            Self::Murmur128 => "murmur128",
            Self::Sha256 => "sha256",
        }
    }

    /// Hex digest, byte for byte what Tyk's Go hashers produce (big-endian sums).
    fn hex(self, input: &str) -> String {
        let mut reader = input.as_bytes();
        match self {
            Self::Murmur32 => {
                let h = murmur3::murmur3_32(&mut reader, 0).expect("reading a slice");
                // `hex` over the big-endian bytes: the same text as `{:08x}` without `fmt`'s
                // machinery, which was 2% of a keyed request.
                hex::encode(h.to_be_bytes())
            }
            Self::Murmur64 | Self::Murmur128 => {
                let h = murmur3::murmur3_x64_128(&mut reader, 0).expect("reading a slice");
                let (h1, h2) = (h as u64, (h >> 64) as u64);
                if self == Self::Murmur64 {
                    hex::encode(h1.to_be_bytes())
                } else {
                    hex::encode([h1.to_be_bytes(), h2.to_be_bytes()].concat())
                }
            }
            Self::Sha256 => hex::encode(sha2::Sha256::digest(input.as_bytes())),
        }
    }
}

/// Turns keys into storage ids and makes new keys, the way Tyk does.
#[derive(Debug, Clone)]
pub struct KeyHasher {
    enabled: bool,
    /// Algorithm for generated keys; `None` makes legacy keys (`org_id` + uuid).
    generate_with: Option<HashAlgorithm>,
}

impl KeyHasher {
    /// `function` is `hash_key_function`; an empty name means legacy keys.
    pub fn new(enabled: bool, function: &str) -> Self {
        Self {
            enabled,
            generate_with: HashAlgorithm::from_name(function),
        }
    }

    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// The id a key is stored under: the key itself, or its hash when hashing is on. The
    /// algorithm comes from the key (generated keys name it; custom keys use murmur32).
    pub fn storage_id<'a>(&self, key: &'a str) -> Cow<'a, str> {
        if !self.enabled {
            return Cow::Borrowed(key);
        }
        Cow::Owned(algorithm_of(key).hex(key))
    }

    /// A new key for `org_id` (Tyk's `GenerateAuthKey`): a [`token`](Self::token) for a
    /// fresh 32-hex-digit id.
    pub fn generate(&self, org_id: &str) -> String {
        self.token(org_id, &uuid::Uuid::new_v4().simple().to_string())
    }

    /// Tyk's `generateToken(org, id)`: with a `hash_key_function`, base64 of
    /// `{"org":…,"id":…,"h":…}` (written as Tyk writes it, values unescaped, so that the hash
    /// of the text is the one Tyk's nodes compute); without one (Tyk's default), `org` + `id`.
    /// An `id` that already begins with `org` loses that prefix first.
    pub fn token(&self, org_id: &str, id: &str) -> String {
        let id = id.strip_prefix(org_id).unwrap_or(id);
        match self.generate_with {
            Some(alg) => {
                let json = [
                    "{\"org\":\"",
                    org_id,
                    "\",\"id\":\"",
                    id,
                    "\",\"h\":\"",
                    alg.name(),
                    "\"}",
                ]
                .concat();
                base64::engine::general_purpose::STANDARD.encode(json)
            }
            None => [org_id, id].concat(),
        }
    }

    /// The texts a key may be stored as, in the order Tyk looks for them (`SessionDetail`):
    /// a key that is already a token of `org_id` as it is; any other first as the token made
    /// from it, then as it is (a key stored under its own name, as Tyk's older versions and
    /// earlier tollgate stored custom keys).
    pub fn candidates<'a>(&self, org_id: &str, key: &'a str) -> (Cow<'a, str>, Option<&'a str>) {
        if token_org(key).is_some_and(|org| org == org_id) {
            return (Cow::Borrowed(key), None);
        }
        let token = self.token(org_id, key);
        if token == key {
            (Cow::Borrowed(key), None)
        } else {
            (Cow::Owned(token), Some(key))
        }
    }
}

/// The JSON object inside a base64 JSON token (`ey...`), as Tyk's `TokenOrg` and
/// `TokenHashAlgo` read it; `None` for any other key.
fn token_json(key: &str) -> Option<serde_json::Value> {
    if !key.starts_with("ey") {
        return None;
    }
    let json = base64::engine::general_purpose::STANDARD.decode(key).ok()?;
    serde_json::from_slice(&json).ok()
}

/// Tyk's `TokenOrg`: the `org` of a base64 JSON token, else the first 24 characters of a
/// longer key when they are hex (a Dashboard's organisation id), else none.
fn token_org(key: &str) -> Option<Cow<'_, str>> {
    if let Some(org) = token_json(key)
        .as_ref()
        .and_then(|t| t.get("org")?.as_str())
    {
        return Some(Cow::Owned(org.to_owned()));
    }
    let prefix = key.get(..24).filter(|_| key.len() > 24)?;
    prefix
        .bytes()
        .all(|b| b.is_ascii_hexdigit())
        .then_some(Cow::Borrowed(prefix))
}

/// Tyk's `TokenHashAlgo`: generated keys are base64 JSON (`ey...`) with an `h` field.
fn algorithm_of(key: &str) -> HashAlgorithm {
    token_json(key)
        .as_ref()
        .and_then(|t| t.get("h")?.as_str())
        .and_then(HashAlgorithm::from_name)
        .unwrap_or(HashAlgorithm::Murmur32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tyk_hashes() {
        let h = KeyHasher::new(true, "murmur64");
        // murmur3 reference vectors (seed 0): x86_32("hello") = 0x248bfa47,
        // x64_128("hello") = cbd8a7b341bd9b02 5b1e906a48ae1d19.
        assert_eq!(h.storage_id("hello"), "248bfa47");
        assert_eq!(HashAlgorithm::Murmur64.hex("hello"), "cbd8a7b341bd9b02");
        assert_eq!(
            HashAlgorithm::Murmur128.hex("hello"),
            "cbd8a7b341bd9b025b1e906a48ae1d19"
        );
        let generated = h.generate("default");
        assert!(generated.starts_with("ey"));
        assert_eq!(h.storage_id(&generated).len(), 16);
        assert_eq!(KeyHasher::new(false, "").storage_id("raw"), "raw");
        let legacy = KeyHasher::new(true, "").generate("org1");
        assert!(legacy.starts_with("org1") && legacy.len() == 36);
    }

    #[test]
    fn tokens_as_tyk_makes_them() {
        let h = KeyHasher::new(true, "murmur64");
        let token = h.token("default", "mycustomkey");
        let json = base64::engine::general_purpose::STANDARD
            .decode(&token)
            .unwrap();
        assert_eq!(
            std::str::from_utf8(&json).unwrap(),
            r#"{"org":"default","id":"mycustomkey","h":"murmur64"}"#
        );
        assert_eq!(h.storage_id(&token).len(), 16, "hashed with its own h");
        assert_eq!(h.token("default", "defaultmycustomkey"), token);
        let legacy = KeyHasher::new(true, "");
        assert_eq!(legacy.token("default", "testkey"), "defaulttestkey");
        assert_eq!(legacy.token("", "testkey"), "testkey");

        // A raw name is looked for as its token first, then as it is; a token of the API's
        // org only as it is.
        let (first, then) = h.candidates("default", "mycustomkey");
        assert_eq!((&*first, then), (token.as_str(), Some("mycustomkey")));
        assert_eq!(
            h.candidates("default", &token),
            (Cow::Borrowed(token.as_str()), None)
        );
        let generated = legacy.generate("default");
        assert_eq!(legacy.candidates("default", &generated).1, None);
        let dashboard_org = "5e9d9544a1dcd60001d0ed20";
        let key = format!("{dashboard_org}abc");
        assert_eq!(legacy.candidates(dashboard_org, &key).1, None);
    }
}
