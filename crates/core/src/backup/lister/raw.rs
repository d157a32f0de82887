//! One object of a list response as the server's own JSON bytes ([`RawObject`], what the backup
//! stores), and the splitter that cuts a list response into them without building a tree.

use kube::core::{ListMeta, TypeMeta};
use serde_json::Value;

use super::ListItem;

/// One object of a list exactly as the server encoded it, with the type fields added, and the
/// few metadata fields the pager and the backup read from it.
///
/// Reading a list this way costs one validating pass over the page (which also finds each
/// object's bytes), a copy, and a pass over each object that skips everything but the
/// metadata: no object tree is built, and no object is encoded again.
#[derive(Debug, Clone)]
pub struct RawObject {
    json: Vec<u8>,
    head: ObjectHead,
}

/// The fields of an object's JSON a backup needs before storing its bytes.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub(crate) struct ObjectHead {
    /// `apiVersion` (absent from the items of built-in lists).
    pub api_version: Option<String>,
    /// `kind` (absent from the items of built-in lists).
    pub kind: Option<String>,
    /// `metadata`, in part.
    #[serde(default)]
    pub metadata: HeadMetadata,
}

/// The part of `metadata` in [`ObjectHead`].
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub(crate) struct HeadMetadata {
    /// `metadata.name`.
    pub name: Option<String>,
    /// `metadata.namespace`.
    pub namespace: Option<String>,
    /// `metadata.uid`.
    pub uid: Option<String>,
    /// `metadata.deletionTimestamp`.
    pub deletion_timestamp: Option<String>,
    /// `metadata.ownerReferences`.
    #[serde(default)]
    pub owner_references: Vec<kpromote_archive::OwnerReference>,
}

impl RawObject {
    /// Reads the head of one object's JSON.
    ///
    /// # Errors
    /// When `json` is not a JSON object.
    pub(crate) fn new(json: Vec<u8>) -> Result<Self, serde_json::Error> {
        let head: ObjectHead = serde_json::from_slice(&json)?;
        Ok(Self { json, head })
    }

    /// The object's JSON.
    #[must_use]
    pub fn json(&self) -> &[u8] {
        &self.json
    }

    /// The object's JSON, owned.
    #[must_use]
    pub(crate) fn into_json(self) -> Vec<u8> {
        self.json
    }

    /// What was read of it.
    #[must_use]
    pub(crate) fn head(&self) -> &ObjectHead {
        &self.head
    }

    /// The whole object, decoded.
    ///
    /// # Errors
    /// Never for an object read from a list (its JSON was validated).
    pub(crate) fn value(&self) -> Result<Value, serde_json::Error> {
        serde_json::from_slice(&self.json)
    }
}

impl ListItem for RawObject {
    fn storage_key(&self) -> String {
        let meta = &self.head.metadata;
        let name = meta.name.as_deref().unwrap_or_default();
        match meta.namespace.as_deref() {
            Some(ns) => format!("{ns}/{name}"),
            None => name.to_owned(),
        }
    }

    /// Inserts `"apiVersion":…,"kind":…,` after the opening brace, unless the object has them
    /// (custom resources do).
    fn set_types(&mut self, types: &TypeMeta) {
        if self.head.api_version.is_some() || self.head.kind.is_some() {
            return;
        }
        let Some(rest) = self.json.strip_prefix(b"{") else {
            return;
        };
        let (Ok(api_version), Ok(kind)) = (
            serde_json::to_string(&types.api_version),
            serde_json::to_string(&types.kind),
        ) else {
            return;
        };
        let empty = rest.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'}');
        let mut json = Vec::with_capacity(self.json.len() + api_version.len() + kind.len() + 24);
        json.extend_from_slice(b"{\"apiVersion\":");
        json.extend_from_slice(api_version.as_bytes());
        json.extend_from_slice(b",\"kind\":");
        json.extend_from_slice(kind.as_bytes());
        if !empty {
            json.push(b',');
        }
        json.extend_from_slice(rest);
        self.json = json;
        self.head.api_version = Some(types.api_version.clone());
        self.head.kind = Some(types.kind.clone());
    }
}

/// A list response split into its metadata and the bytes of each item. serde_json does all the
/// parsing: each value is read by a `StreamDeserializer`, whose byte offset delimits it, so
/// malformed JSON is an error exactly where serde_json finds it.
pub(super) fn split_list(body: &[u8]) -> Result<(ListMeta, Vec<RawObject>), serde_json::Error> {
    use serde::de::{Error as _, IgnoredAny};
    fn one<T: serde::de::DeserializeOwned>(input: &[u8]) -> Result<(T, usize), serde_json::Error> {
        let mut values = serde_json::Deserializer::from_slice(input).into_iter::<T>();
        let value = values
            .next()
            .ok_or_else(|| serde_json::Error::custom("unexpected end of the list response"))??;
        Ok((value, values.byte_offset()))
    }
    let skip_ws = |mut pos: usize| {
        while body.get(pos).is_some_and(u8::is_ascii_whitespace) {
            pos += 1;
        }
        pos
    };
    let expect = |pos: usize, byte: u8| {
        if body.get(pos) == Some(&byte) {
            Ok(pos + 1)
        } else {
            Err(serde_json::Error::custom(format!(
                "list response: expected `{}` at byte {pos}",
                char::from(byte)
            )))
        }
    };
    let rest = |pos: usize| body.get(pos..).unwrap_or_default();
    let mut metadata = ListMeta::default();
    let mut items = Vec::new();
    let mut pos = expect(skip_ws(0), b'{')?;
    let mut first = true;
    loop {
        pos = skip_ws(pos);
        if first && body.get(pos) == Some(&b'}') {
            break;
        }
        first = false;
        let (key, len) = one::<String>(rest(pos))?;
        pos = skip_ws(expect(skip_ws(pos + len), b':')?);
        match key.as_str() {
            "metadata" => {
                let (meta, len) = one::<ListMeta>(rest(pos))?;
                metadata = meta;
                pos += len;
            }
            "items" if body.get(pos) == Some(&b'[') => {
                pos += 1;
                let mut first = true;
                loop {
                    pos = skip_ws(pos);
                    if first && body.get(pos) == Some(&b']') {
                        pos += 1;
                        break;
                    }
                    first = false;
                    let (_, len) = one::<IgnoredAny>(rest(pos))?;
                    items.push(RawObject::new(rest(pos)[..len].to_vec())?);
                    pos = skip_ws(pos + len);
                    match body.get(pos) {
                        Some(b',') => pos += 1,
                        Some(b']') => {
                            pos += 1;
                            break;
                        }
                        _ => {
                            return Err(serde_json::Error::custom(format!(
                                "list response: bad items at byte {pos}"
                            )));
                        }
                    }
                }
            }
            _ => {
                let (_, len) = one::<IgnoredAny>(rest(pos))?;
                pos += len;
            }
        }
        pos = skip_ws(pos);
        match body.get(pos) {
            Some(b',') => pos += 1,
            Some(b'}') => break,
            _ => {
                return Err(serde_json::Error::custom(format!(
                    "list response: bad object at byte {pos}"
                )));
            }
        }
    }
    Ok((metadata, items))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            "[ -~\\\\\"\u{e9}\u{1F600}]{0,12}".prop_map(Value::String),
        ];
        leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::btree_map("[a-z\"\\\\{}\\[\\],:]{1,6}", inner, 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    fn item() -> impl Strategy<Value = Value> {
        (
            "[a-z0-9.-]{1,10}",
            prop::option::of("[a-z0-9-]{1,8}"),
            json_value(),
        )
            .prop_map(|(name, ns, extra)| {
                let mut meta = serde_json::Map::new();
                meta.insert("name".into(), Value::String(name));
                if let Some(ns) = ns {
                    meta.insert("namespace".into(), Value::String(ns));
                }
                serde_json::json!({ "metadata": meta, "data": extra })
            })
    }

    /// Encodes `items` as a list response, with `ws` as the whitespace between tokens.
    fn encode(items: &[Value], token: Option<&str>, ws: &str, items_first: bool) -> Vec<u8> {
        let items_text: Vec<String> = items
            .iter()
            .map(|i| serde_json::to_string(i).unwrap_or_default())
            .collect();
        let items_part = format!(
            "\"items\"{ws}:{ws}[{ws}{}{ws}]",
            items_text.join(&format!("{ws},{ws}"))
        );
        let meta = serde_json::json!({ "resourceVersion": "42", "continue": token });
        let meta_part = format!("\"metadata\"{ws}:{ws}{meta}");
        let kind_part = format!("\"kind\"{ws}:{ws}\"ConfigMapList\",{ws}\"apiVersion\":\"v1\"");
        let body = if items_first {
            format!("{ws}{{{ws}{items_part}{ws},{ws}{kind_part},{meta_part}{ws}}}{ws}")
        } else {
            format!("{{{kind_part},{ws}{meta_part},{ws}{items_part}}}")
        };
        body.into_bytes()
    }

    proptest! {
        #[test]
        fn split_list_finds_exactly_the_items_serde_json_finds(
            items in prop::collection::vec(item(), 0..6),
            ws in prop_oneof![Just(""), Just(" "), Just("\n\t ")],
            items_first in any::<bool>(),
            token in prop::option::of("[A-Za-z0-9_-]{1,20}"),
        ) {
            let body = encode(&items, token.as_deref(), ws, items_first);
            let (meta, split) = split_list(&body).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(meta.resource_version.as_deref(), Some("42"));
            prop_assert_eq!(meta.continue_, token);
            prop_assert_eq!(split.len(), items.len());
            for (raw, original) in split.iter().zip(&items) {
                let decoded: Value = serde_json::from_slice(raw.json()).map_err(|e| TestCaseError::fail(e.to_string()))?;
                prop_assert_eq!(&decoded, original);
                prop_assert_eq!(raw.head().metadata.name.as_deref(), original["metadata"]["name"].as_str());
            }
        }

        #[test]
        fn split_list_never_panics_on_garbage(body in prop::collection::vec(any::<u8>(), 0..64)) {
            let _ = split_list(&body);
        }
    }

    #[test]
    fn malformed_lists_are_errors() {
        for bad in [
            &b""[..],
            b"[]",
            b"{",
            b"{\"items\":[{}",
            b"{\"items\":[{},]}",
            b"{\"metadata\":{},}",
            b"{,}",
            b"{\"items\":[1]}",
            b"{\"items\":[{}] \"x\":1}",
            b"{\"metadata\":{}}trailing",
        ] {
            let result = split_list(bad);
            // Trailing bytes after the closing brace are not read; everything else must fail.
            if bad.ends_with(b"trailing") {
                assert!(result.is_ok());
            } else {
                assert!(result.is_err(), "{:?} was accepted", String::from_utf8_lossy(bad));
            }
        }
        let (_, none) = split_list(b"{\"items\":null,\"metadata\":{}}").unwrap_or_else(|e| panic!("{e}"));
        assert!(none.is_empty());
    }

    #[test]
    fn type_fields_are_added_once() {
        let types = TypeMeta {
            api_version: "apps/v1".into(),
            kind: "Deployment".into(),
        };
        let mut plain = RawObject::new(br#"{"metadata":{"name":"a"},"spec":{}}"#.to_vec())
            .unwrap_or_else(|e| panic!("{e}"));
        plain.set_types(&types);
        assert_eq!(
            plain.json(),
            br#"{"apiVersion":"apps/v1","kind":"Deployment","metadata":{"name":"a"},"spec":{}}"#
        );
        let mut empty = RawObject::new(b"{ }".to_vec()).unwrap_or_else(|e| panic!("{e}"));
        empty.set_types(&types);
        assert_eq!(empty.json(), br#"{"apiVersion":"apps/v1","kind":"Deployment" }"#);
        assert!(serde_json::from_slice::<Value>(empty.json()).is_ok());
        let custom = br#"{"apiVersion":"example.io/v1","kind":"WebApp","metadata":{"name":"a"}}"#;
        let mut cr = RawObject::new(custom.to_vec()).unwrap_or_else(|e| panic!("{e}"));
        cr.set_types(&types);
        assert_eq!(cr.json(), custom, "custom resources carry their own type fields");
    }
}
