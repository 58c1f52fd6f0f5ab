//! One personal value sealed with AES-256-GCM, and its stored form (see the module doc
//! of [`keys`](super)).

use aes_gcm::aead::{Aead, AeadCore, AeadInPlace, OsRng, Payload};
use aes_gcm::{Aes256Gcm, Nonce, Tag};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Map, Value};
use zeroize::{Zeroize, Zeroizing};

/// The reserved key of an encrypted value's stored form: an object with this one key,
/// whose value is `"<FORMAT_VERSION>.<base64url>"`.
pub const ENCRYPTED_KEY: &str = "$orkestra:personal";

/// The version of the stored form this release writes: `v1` is AES-256-GCM with a
/// 12-byte random nonce, then the ciphertext and its 16-byte tag, in base64url without
/// padding; the associated data is the subject and the field's path.
pub const FORMAT_VERSION: &str = "v1";

const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;

/// The associated data: a label, the subject and the path, each length-prefixed so no
/// two (subject, path) pairs give the same bytes.
fn associated_data(subject: &str, path: &str) -> Vec<u8> {
    const LABEL: &[u8] = b"orkestra.personal.v1";
    let mut aad = Vec::with_capacity(LABEL.len() + 8 + subject.len() + path.len());
    aad.extend_from_slice(LABEL);
    for part in [subject, path] {
        aad.extend_from_slice(&(part.len() as u32).to_be_bytes());
        aad.extend_from_slice(part.as_bytes());
    }
    aad
}

/// Calls `f` with the associated data of `subject` and `path`, built on the stack when
/// it fits (reading opens two values per event: no allocation for them).
fn with_associated_data<T>(subject: &str, path: &str, f: impl FnOnce(&[u8]) -> T) -> T {
    const LABEL: &[u8] = b"orkestra.personal.v1";
    let len = LABEL.len() + 8 + subject.len() + path.len();
    let mut stack = [0u8; 256];
    if len > stack.len() {
        return f(&associated_data(subject, path));
    }
    stack[..LABEL.len()].copy_from_slice(LABEL);
    let mut at = LABEL.len();
    for part in [subject, path] {
        stack[at..at + 4].copy_from_slice(&(part.len() as u32).to_be_bytes());
        at += 4;
        stack[at..at + part.len()].copy_from_slice(part.as_bytes());
        at += part.len();
    }
    f(&stack[..at])
}

/// The error of a value that does not authenticate.
fn not_authentic(subject: &str) -> String {
    format!(
        "the encrypted value does not authenticate for subject {subject:?} at this field: it \
         was changed, or copied from another subject or field"
    )
}

/// The text after the format version, or the error naming the version found.
fn versioned(text: &str) -> Result<&str, String> {
    text.strip_prefix(FORMAT_VERSION)
        .and_then(|t| t.strip_prefix('.'))
        .ok_or_else(|| {
            let version = text.split('.').next().unwrap_or_default();
            format!(
                "the encrypted value has format {version:?}; this release reads {FORMAT_VERSION:?}"
            )
        })
}

/// [`open_bytes`] appending the plain JSON text to `out`: the read path's form, which
/// decrypts a short value (up to 1 KiB sealed) in a stack buffer, wiped after, without
/// allocating. `out` is unchanged on error.
pub(crate) fn open_into(
    cipher: &Aes256Gcm,
    subject: &str,
    path: &str,
    text: &str,
    out: &mut String,
) -> Result<(), String> {
    let encoded = versioned(text)?;
    let mut stack = [0u8; 1024];
    let estimate = base64::decoded_len_estimate(encoded.len());
    if estimate > stack.len() {
        let plain = open_bytes(cipher, subject, path, text)?;
        out.push_str(
            std::str::from_utf8(&plain)
                .map_err(|_| "the decrypted value is not UTF-8 text".to_owned())?,
        );
        return Ok(());
    }
    let result = (|| {
        let len = URL_SAFE_NO_PAD
            .decode_slice(encoded, &mut stack)
            .map_err(|e| format!("the encrypted value is not base64url: {e}"))?;
        if len < NONCE_LEN + TAG_LEN {
            return Err(format!(
                "the encrypted value has {len} bytes, fewer than a nonce and a tag"
            ));
        }
        let (nonce, rest) = stack[..len].split_at_mut(NONCE_LEN);
        let (body, tag) = rest.split_at_mut(len - NONCE_LEN - TAG_LEN);
        let nonce = *Nonce::from_slice(nonce);
        let tag = *Tag::from_slice(tag);
        with_associated_data(subject, path, |aad| {
            cipher.decrypt_in_place_detached(&nonce, aad, body, &tag)
        })
        .map_err(|_| not_authentic(subject))?;
        out.push_str(
            std::str::from_utf8(body)
                .map_err(|_| "the decrypted value is not UTF-8 text".to_owned())?,
        );
        Ok(())
    })();
    // Only what the decoder may have written (wiping is a volatile write per byte).
    stack[..estimate].zeroize();
    result
}

/// `value` sealed for `subject` at `path`, in its stored form.
pub(crate) fn seal_value(
    cipher: &Aes256Gcm,
    subject: &str,
    path: &str,
    value: &Value,
) -> Result<Value, String> {
    let plaintext = Zeroizing::new(
        serde_json::to_vec(value).map_err(|e| format!("cannot encode the value: {e}"))?,
    );
    let nonce = Aes256Gcm::generate_nonce(&mut OsRng);
    let aad = associated_data(subject, path);
    let sealed = cipher
        .encrypt(
            &nonce,
            Payload {
                msg: &plaintext,
                aad: &aad,
            },
        )
        .map_err(|_| "encryption failed".to_owned())?;
    let mut bytes = Vec::with_capacity(NONCE_LEN + sealed.len());
    bytes.extend_from_slice(&nonce);
    bytes.extend_from_slice(&sealed);
    let mut text = String::with_capacity(FORMAT_VERSION.len() + 1 + bytes.len() * 4 / 3 + 4);
    text.push_str(FORMAT_VERSION);
    text.push('.');
    URL_SAFE_NO_PAD.encode_string(&bytes, &mut text);
    let mut object = Map::with_capacity(1);
    object.insert(ENCRYPTED_KEY.to_owned(), Value::String(text));
    Ok(Value::Object(object))
}

/// The text of a value in the stored form (an object whose one key is
/// [`ENCRYPTED_KEY`] with a string), `None` for any other value.
pub(crate) fn sealed_text(value: &Value) -> Option<&str> {
    match value {
        Value::Object(map) if map.len() == 1 => map.get(ENCRYPTED_KEY)?.as_str(),
        _ => None,
    }
}

/// The value sealed in `text` for `subject` at `path`. The error says why in words that
/// name neither the key nor the plaintext.
pub(crate) fn open_value(
    cipher: &Aes256Gcm,
    subject: &str,
    path: &str,
    text: &str,
) -> Result<Value, String> {
    let plaintext = open_bytes(cipher, subject, path, text)?;
    serde_json::from_slice(&plaintext).map_err(|e| format!("the decrypted value is not JSON: {e}"))
}

/// The JSON text sealed in `text` for `subject` at `path` (authenticated: the text
/// this store sealed), wiped when dropped.
pub(crate) fn open_bytes(
    cipher: &Aes256Gcm,
    subject: &str,
    path: &str,
    text: &str,
) -> Result<Zeroizing<Vec<u8>>, String> {
    let encoded = versioned(text)?;
    let bytes = URL_SAFE_NO_PAD
        .decode(encoded)
        .map_err(|e| format!("the encrypted value is not base64url: {e}"))?;
    if bytes.len() < NONCE_LEN + TAG_LEN {
        return Err(format!(
            "the encrypted value has {} bytes, fewer than a nonce and a tag",
            bytes.len()
        ));
    }
    let nonce = *Nonce::from_slice(&bytes[..NONCE_LEN]);
    // Decrypted where it lies: the nonce's bytes dropped, the tag taken off.
    let mut buffer = Zeroizing::new(bytes);
    buffer.drain(..NONCE_LEN);
    with_associated_data(subject, path, |aad| {
        cipher.decrypt_in_place(&nonce, aad, &mut *buffer)
    })
    .map_err(|_| not_authentic(subject))?;
    Ok(buffer)
}

#[cfg(test)]
mod tests {
    use super::*;
    use aes_gcm::KeyInit;
    use serde_json::json;

    fn cipher(byte: u8) -> Aes256Gcm {
        Aes256Gcm::new(&[byte; 32].into())
    }

    #[test]
    fn a_sealed_value_opens_only_for_its_subject_and_path() {
        let c = cipher(1);
        let value = json!({"street": "1 Main St", "zip": 12345});
        let sealed = seal_value(&c, "alice", "address", &value).unwrap();
        let text = sealed_text(&sealed).unwrap();
        assert!(text.starts_with("v1."), "{text}");
        assert!(!sealed.to_string().contains("Main"));
        assert_eq!(open_value(&c, "alice", "address", text).unwrap(), value);
        for (subject, path) in [("bob", "address"), ("alice", "email"), ("alic", "eaddress")] {
            let e = open_value(&c, subject, path, text).unwrap_err();
            assert!(e.contains("does not authenticate"), "{e}");
        }
        let e = open_value(&cipher(2), "alice", "address", text).unwrap_err();
        assert!(e.contains("does not authenticate"), "{e}");
    }

    #[test]
    fn open_into_agrees_with_open_bytes_and_leaves_out_alone_on_error() {
        let c = cipher(1);
        let long = "x".repeat(2000);
        for value in [
            json!("ada@example.com"),
            json!({"street": "1 Main St"}),
            json!(long),
        ] {
            let sealed = seal_value(&c, "alice", "email", &value).unwrap();
            let text = sealed_text(&sealed).unwrap();
            let mut out = String::from("{\"a\":");
            open_into(&c, "alice", "email", text, &mut out).unwrap();
            let plain = open_bytes(&c, "alice", "email", text).unwrap();
            assert_eq!(&out.as_bytes()["{\"a\":".len()..], plain.as_slice());
            let mut out = String::from("kept");
            let e = open_into(&c, "bob", "email", text, &mut out).unwrap_err();
            assert!(e.contains("does not authenticate"), "{e}");
            assert_eq!(out, "kept");
        }
        let mut out = String::new();
        assert!(
            open_into(&c, "s", "f", "v1.AAAA", &mut out)
                .unwrap_err()
                .contains("fewer than")
        );
        assert!(
            open_into(&c, "s", "f", "v1.!!", &mut out)
                .unwrap_err()
                .contains("base64url")
        );
        assert!(
            open_into(&c, "s", "f", "v2.AAAA", &mut out)
                .unwrap_err()
                .contains("\"v2\"")
        );
        // Associated data longer than the stack buffer still authenticates.
        let subject = "s".repeat(300);
        let sealed = seal_value(&c, &subject, "f", &json!(1)).unwrap();
        open_into(&c, &subject, "f", sealed_text(&sealed).unwrap(), &mut out).unwrap();
        assert_eq!(out, "1");
    }

    #[test]
    fn each_seal_has_its_own_nonce() {
        let c = cipher(1);
        let a = seal_value(&c, "s", "f", &json!("x")).unwrap();
        let b = seal_value(&c, "s", "f", &json!("x")).unwrap();
        assert_ne!(a, b);
    }

    #[test]
    fn a_changed_or_foreign_text_is_refused_in_words() {
        let c = cipher(1);
        let sealed = seal_value(&c, "s", "f", &json!("secret")).unwrap();
        let text = sealed_text(&sealed).unwrap().to_owned();
        // One character of the ciphertext changed.
        let mut changed: Vec<char> = text.chars().collect();
        let last = changed.len() - 5;
        changed[last] = if changed[last] == 'A' { 'B' } else { 'A' };
        let changed: String = changed.into_iter().collect();
        assert!(open_value(&c, "s", "f", &changed).is_err());
        let e = open_value(&c, "s", "f", "v9.AAAA").unwrap_err();
        assert!(e.contains("\"v9\""), "{e}");
        let e = open_value(&c, "s", "f", "v1.!!").unwrap_err();
        assert!(e.contains("base64url"), "{e}");
        let e = open_value(&c, "s", "f", "v1.AAAA").unwrap_err();
        assert!(e.contains("fewer than a nonce"), "{e}");
    }

    #[test]
    fn only_the_exact_form_is_recognised() {
        assert!(sealed_text(&json!({ENCRYPTED_KEY: "v1.x"})).is_some());
        assert!(sealed_text(&json!({ENCRYPTED_KEY: "v1.x", "other": 1})).is_none());
        assert!(sealed_text(&json!({ENCRYPTED_KEY: 3})).is_none());
        assert!(sealed_text(&json!("v1.x")).is_none());
    }
}
