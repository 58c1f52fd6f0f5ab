//! The fast path of reading personal data: one pass over a record's JSON text finds its
//! subject and every value in the stored form with its path, and the plain values are
//! spliced into the text, without building a `serde_json::Value` and writing it again.
//!
//! The scanner is strict about what it understands and gives up (`None`) on anything
//! else (an escaped key or subject, nesting deeper than [`MAX_DEPTH`], text that is not
//! JSON): the caller then takes the slow path over a parsed value, which is the
//! reference this one must agree with (a unit test holds them together).

use std::ops::Range;

use super::ENCRYPTED_KEY;

/// Deeper records take the slow path.
const MAX_DEPTH: usize = 64;

/// A value in the stored form found in the text.
#[derive(Debug, PartialEq)]
pub(crate) struct Sealed {
    /// The whole object `{"$orkestra:personal": "..."}`.
    pub(crate) span: Range<usize>,
    /// The versioned text inside it.
    pub(crate) text: Range<usize>,
    /// Its concrete path (`contacts[1].phone`).
    pub(crate) path: String,
    /// Its pattern (`contacts[].phone`), to find its field's replacement.
    pub(crate) pattern: String,
}

/// What a scan found: the subject (the top-level string field named) and the sealed
/// values in text order.
#[derive(Debug)]
pub(crate) struct Scan {
    pub(crate) subject: Option<Range<usize>>,
    pub(crate) sealed: Vec<Sealed>,
}

struct Scanner<'a> {
    /// The text, and its bytes (what the cursor walks).
    s: &'a str,
    b: &'a [u8],
    i: usize,
    subject_field: &'a str,
    subject: Option<Range<usize>>,
    sealed: Vec<Sealed>,
    path: String,
    pattern: String,
}

/// Scans `json` (a JSON object) for its subject field and its sealed values; `None`
/// when the text holds something the scanner leaves to the slow path.
pub(crate) fn scan(json: &str, subject_field: &str) -> Option<Scan> {
    let mut s = Scanner {
        s: json,
        b: json.as_bytes(),
        i: 0,
        subject_field,
        subject: None,
        sealed: Vec::new(),
        path: String::new(),
        pattern: String::new(),
    };
    s.ws();
    if s.peek()? != b'{' {
        return None;
    }
    s.value(0)?;
    s.ws();
    if s.i != s.b.len() {
        return None;
    }
    Some(Scan {
        subject: s.subject,
        sealed: s.sealed,
    })
}

fn push_name(path: &mut String, name: &str) {
    if !path.is_empty() {
        path.push('.');
    }
    path.push_str(name);
}

impl<'a> Scanner<'a> {
    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    fn ws(&mut self) {
        while let Some(b' ' | b'\n' | b'\r' | b'\t') = self.peek() {
            self.i += 1;
        }
    }

    fn expect(&mut self, byte: u8) -> Option<()> {
        self.ws();
        (self.peek()? == byte).then(|| self.i += 1)
    }

    /// A string at the cursor: the range inside its quotes, and whether it holds an
    /// escape.
    fn string(&mut self) -> Option<(Range<usize>, bool)> {
        if self.peek()? != b'"' {
            return None;
        }
        let start = self.i + 1;
        let mut i = start;
        let mut escaped = false;
        loop {
            match *self.b.get(i)? {
                b'"' => break,
                b'\\' => {
                    escaped = true;
                    i += 2;
                }
                _ => i += 1,
            }
        }
        self.i = i + 1;
        Some((start..i, escaped))
    }

    /// The text of `range`: the inside of a string, so it starts and ends next to a
    /// quote, on character boundaries (checked, not validated again).
    fn text(&self, range: Range<usize>) -> Option<&'a str> {
        self.s.get(range)
    }

    fn value(&mut self, depth: usize) -> Option<()> {
        if depth > MAX_DEPTH {
            return None;
        }
        self.ws();
        match self.peek()? {
            b'{' => self.object(depth),
            b'[' => self.array(depth),
            b'"' => self.string().map(drop),
            _ => {
                let start = self.i;
                while let Some(c) = self.peek() {
                    if matches!(c, b',' | b'}' | b']' | b' ' | b'\n' | b'\r' | b'\t') {
                        break;
                    }
                    self.i += 1;
                }
                (self.i > start).then_some(())
            }
        }
    }

    fn object(&mut self, depth: usize) -> Option<()> {
        let start = self.i;
        self.i += 1;
        self.ws();
        if self.peek()? == b'}' {
            self.i += 1;
            return Some(());
        }
        let mut first = true;
        loop {
            self.ws();
            let (key, escaped) = self.string()?;
            if escaped {
                return None;
            }
            let key = self.text(key)?;
            self.expect(b':')?;
            self.ws();
            if first && key == ENCRYPTED_KEY && self.peek()? == b'"' {
                // The stored form: this one key with a string, then the end.
                let (text, escaped) = self.string()?;
                self.ws();
                if !escaped && self.peek()? == b'}' {
                    self.i += 1;
                    self.sealed.push(Sealed {
                        span: start..self.i,
                        text,
                        path: self.path.clone(),
                        pattern: self.pattern.clone(),
                    });
                    return Some(());
                }
            } else if depth == 0 && key == self.subject_field {
                if self.peek()? == b'"' {
                    let (value, escaped) = self.string()?;
                    if escaped {
                        return None;
                    }
                    self.subject = Some(value);
                } else {
                    self.value(depth + 1)?;
                }
            } else {
                let (len, plen) = (self.path.len(), self.pattern.len());
                push_name(&mut self.path, key);
                push_name(&mut self.pattern, key);
                let done = self.value(depth + 1);
                self.path.truncate(len);
                self.pattern.truncate(plen);
                done?;
            }
            first = false;
            self.ws();
            match self.peek()? {
                b',' => self.i += 1,
                b'}' => {
                    self.i += 1;
                    return Some(());
                }
                _ => return None,
            }
        }
    }

    fn array(&mut self, depth: usize) -> Option<()> {
        self.i += 1;
        self.ws();
        if self.peek()? == b']' {
            self.i += 1;
            return Some(());
        }
        let mut index = 0usize;
        loop {
            let (len, plen) = (self.path.len(), self.pattern.len());
            self.path.push('[');
            self.path.push_str(itoa(index, &mut [0u8; 20]));
            self.path.push(']');
            self.pattern.push_str("[]");
            let done = self.value(depth + 1);
            self.path.truncate(len);
            self.pattern.truncate(plen);
            done?;
            index += 1;
            self.ws();
            match self.peek()? {
                b',' => self.i += 1,
                b']' => {
                    self.i += 1;
                    return Some(());
                }
                _ => return None,
            }
        }
    }
}

/// `n` in decimal, without an allocation.
fn itoa(mut n: usize, buffer: &mut [u8; 20]) -> &str {
    let mut i = buffer.len();
    loop {
        i -= 1;
        buffer[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    std::str::from_utf8(&buffer[i..]).unwrap_or("0")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_subject_and_every_sealed_value_with_its_path() {
        let json = r#"{"id":"c-1","email":{"$orkestra:personal":"v1.AAA"},"n":[1,{"p":{"$orkestra:personal" : "v1.BBB"}}],"x":{"$orkestra:personal":"v1.C","y":1}}"#;
        let scan = scan(json, "id").unwrap();
        assert_eq!(&json[scan.subject.unwrap()], "c-1");
        let found: Vec<(&str, &str, &str, &str)> = scan
            .sealed
            .iter()
            .map(|s| {
                (
                    &json[s.span.clone()],
                    &json[s.text.clone()],
                    s.path.as_str(),
                    s.pattern.as_str(),
                )
            })
            .collect();
        assert_eq!(
            found,
            [
                (
                    r#"{"$orkestra:personal":"v1.AAA"}"#,
                    "v1.AAA",
                    "email",
                    "email"
                ),
                (
                    r#"{"$orkestra:personal" : "v1.BBB"}"#,
                    "v1.BBB",
                    "n[1].p",
                    "n[].p"
                ),
            ]
        );
    }

    #[test]
    fn leaves_what_it_does_not_understand_to_the_slow_path() {
        assert!(
            scan(r#"{"id":"a\"b"}"#, "id").is_none(),
            "an escaped subject"
        );
        assert!(scan(r#"{"a\u0041":1}"#, "id").is_none(), "an escaped key");
        assert!(scan(r#"{"id":"a""#, "id").is_none(), "cut short");
        assert!(scan(r#"[1]"#, "id").is_none(), "not an object");
        assert!(scan(r#"{"a":1} x"#, "id").is_none(), "trailing text");
        let deep = format!("{{\"a\":{}1{}}}", "[".repeat(100), "]".repeat(100));
        assert!(scan(&deep, "id").is_none(), "too deep");
        assert!(scan(r#"{"id":3,"e":[]}"#, "id").unwrap().subject.is_none());
    }

    #[test]
    fn numbers_up_to_the_largest_index() {
        assert_eq!(itoa(0, &mut [0; 20]), "0");
        assert_eq!(itoa(1203, &mut [0; 20]), "1203");
        assert_eq!(itoa(usize::MAX, &mut [0; 20]), usize::MAX.to_string());
    }
}
