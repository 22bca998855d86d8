//! One problem found in a configuration, structured: where it is (source,
//! section, network, key path) and what it is (what is wrong, what is
//! allowed, a did-you-mean hint).
//!
//! The validator (`read.rs`) builds these; [`Problem`]'s `Display` is the
//! one-line message users see, and the Python loader gets the same values
//! as JSON (`check_config`), finds the YAML line of [`Problem::path`] and
//! prints the message with that line. Pure data; any thread.

use std::fmt;

use serde::Serialize;

/// The part of a document a problem is in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Section {
    /// The document itself or one of its top-level keys.
    Top,
    /// The `broker:` section.
    Broker,
    /// One entry of `vmnet:` (the network is [`Problem::network`]).
    Network,
}

/// One step of a key path: a mapping key or a list index.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum PathPart {
    Key(String),
    Index(usize),
}

/// One thing wrong with a configuration.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Problem {
    /// What was read (usually the file name).
    pub source: String,
    pub section: Section,
    /// The network, for [`Section::Network`].
    pub network: Option<String>,
    /// The key within the section, as messages print it
    /// (`portForwarding[0].externalPort`); `None`: the section as a whole.
    pub key: Option<String>,
    /// The same place as a path from the document's root
    /// (`["vmnet", "shared", "portForwarding", 0, "externalPort"]`).
    pub path: Vec<PathPart>,
    /// What is wrong (`70000 is out of range`).
    pub what: String,
    /// What would be right (`use 1280..9000`), if there is one thing to say.
    pub allowed: Option<String>,
    /// A known key close to an unknown one.
    pub hint: Option<String>,
}

impl Problem {
    /// The message without its source: `network "shared": key "mtu": 70000
    /// is out of range; use 1280..9000`.
    pub fn detail(&self) -> String {
        let mut out = String::new();
        match self.section {
            Section::Top => {}
            Section::Broker => out.push_str("broker: "),
            Section::Network => {
                out.push_str(&format!("network {}: ", quote(self.network.as_deref().unwrap_or(""))));
            }
        }
        if let Some(key) = &self.key {
            out.push_str(&format!("key {}: ", quote(key)));
        }
        out.push_str(&self.what);
        if let Some(hint) = &self.hint {
            out.push_str(&format!(" (did you mean {}?)", quote(hint)));
        }
        if let Some(allowed) = &self.allowed {
            out.push_str("; ");
            out.push_str(allowed);
        }
        out
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.source, self.detail())
    }
}

/// A string in double quotes, escaped as JSON.
pub(super) fn quote(text: &str) -> String {
    serde_json::to_string(text).unwrap_or_else(|_| format!("\"{text}\""))
}

/// The path parts of a key as messages print it: `portForwarding[0].mac`
/// gives `portForwarding`, `0`, `mac`. Only for keys the validator spells
/// itself; an unknown key from a file is appended whole by the caller.
pub(super) fn key_parts(key: &str) -> Vec<PathPart> {
    let mut parts = Vec::new();
    for segment in key.split('.').filter(|s| !s.is_empty()) {
        let (name, mut rest) = match segment.find('[') {
            Some(i) => (&segment[..i], &segment[i..]),
            None => (segment, ""),
        };
        if !name.is_empty() {
            parts.push(PathPart::Key(name.to_string()));
        }
        while let Some(end) = rest.find(']') {
            match rest[1..end].parse() {
                Ok(i) => parts.push(PathPart::Index(i)),
                Err(_) => parts.push(PathPart::Key(rest[1..end].to_string())),
            }
            rest = &rest[end + 1..];
        }
    }
    parts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_parts_split_keys_and_indices() {
        assert_eq!(
            key_parts("portForwarding[0].externalPort"),
            vec![PathPart::Key("portForwarding".into()), PathPart::Index(0), PathPart::Key("externalPort".into())]
        );
        assert_eq!(key_parts("allowedUsers[12]"), vec![PathPart::Key("allowedUsers".into()), PathPart::Index(12)]);
        assert_eq!(key_parts("mtu"), vec![PathPart::Key("mtu".into())]);
    }

    #[test]
    fn detail_renders_every_part() {
        let p = Problem {
            source: "n.yaml".into(),
            section: Section::Network,
            network: Some("shared".into()),
            key: Some("mtuu".into()),
            path: vec![],
            what: "unknown key".into(),
            allowed: Some("allowed keys: mtu".into()),
            hint: Some("mtu".into()),
        };
        assert_eq!(p.to_string(), r#"n.yaml: network "shared": key "mtuu": unknown key (did you mean "mtu"?); allowed keys: mtu"#);
    }
}
