//! A check the JSON parsers do not make: no object may repeat a key. serde_json
//! (and so the safetensors header parser) keeps the last of two equal keys, so
//! a header could carry two entries for one tensor or two `graph`s of which a
//! reviewer sees one and the loader uses the other.

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use std::collections::HashSet;

/// Objects may nest at most this deep (serde_json's own limit is 128).
const MAX_DEPTH: usize = 64;

/// An error naming the first repeated key, or the parser's own error.
pub fn check_unique_keys(text: &str) -> Result<(), String> {
    let mut de = serde_json::Deserializer::from_str(text);
    Walk(0).deserialize(&mut de).map_err(|e| e.to_string())?;
    de.end().map_err(|e| e.to_string())
}

/// Visits any JSON value, checking every object's keys; nothing is kept.
struct Walk(usize);

impl<'de> DeserializeSeed<'de> for Walk {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        if self.0 > MAX_DEPTH {
            return Err(de::Error::custom("JSON nested too deeply"));
        }
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Walk {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element_seed(Walk(self.0 + 1))?.is_some() {}
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let mut seen = HashSet::new();
        while let Some(key) = map.next_key::<String>()? {
            if !seen.insert(key.clone()) {
                return Err(de::Error::custom(format!("key \"{key}\" appears twice")));
            }
            map.next_value_seed(Walk(self.0 + 1))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::check_unique_keys;

    #[test]
    fn repeated_keys_are_found_at_any_depth() {
        assert!(check_unique_keys(r#"{"a":1,"b":[{"c":2,"d":{"e":null}}]}"#).is_ok());
        let e = check_unique_keys(r#"{"a":1,"a":2}"#).unwrap_err();
        assert!(e.contains("\"a\" appears twice"), "{e}");
        assert!(check_unique_keys(r#"{"x":[{"k":1,"k":1}]}"#).is_err());
        assert!(check_unique_keys(r#"{"a":1} trailing"#).is_err());
        let deep = "[".repeat(100) + &"]".repeat(100);
        assert!(check_unique_keys(&deep).is_err());
    }
}
