//! PII redaction without regular expressions: small scanners for e-mail addresses and phone
//! numbers, replaced by `[EMAIL]` and `[PHONE]`.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum RedactKind {
    Email,
    Phone,
}

pub struct Redactor {
    email: bool,
    phone: bool,
}

fn is_local(c: char) -> bool {
    c.is_ascii_alphanumeric() || "._%+-".contains(c)
}

fn is_domain(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '.' || c == '-'
}

fn redact_emails(text: &str) -> (String, usize) {
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let mut count = 0;
    let mut i = 0;
    let mut copied = 0;
    while i < chars.len() {
        if chars[i] == '@' {
            let mut start = i;
            while start > copied && is_local(chars[start - 1]) {
                start -= 1;
            }
            let mut end = i + 1;
            while end < chars.len() && is_domain(chars[end]) {
                end += 1;
            }
            // Trailing dots belong to the sentence, not the domain.
            while end > i + 1 && chars[end - 1] == '.' {
                end -= 1;
            }
            let domain: String = chars[i + 1..end].iter().collect();
            let tld_ok = domain.rsplit_once('.').is_some_and(|(host, tld)| {
                !host.is_empty() && tld.len() >= 2 && tld.chars().all(|c| c.is_ascii_alphabetic())
            });
            if start < i && tld_ok {
                out.extend(&chars[copied..start]);
                out.push_str("[EMAIL]");
                copied = end;
                count += 1;
                i = end;
                continue;
            }
        }
        i += 1;
    }
    out.extend(&chars[copied..]);
    (out, count)
}

fn redact_phones(text: &str) -> (String, usize) {
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let mut count = 0;
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let starts = c.is_ascii_digit()
            || (c == '+' || c == '(') && chars.get(i + 1).is_some_and(|d| d.is_ascii_digit());
        let after_word = i > 0 && (chars[i - 1].is_alphanumeric() || chars[i - 1] == '[');
        if starts && !after_word {
            let mut end = i;
            let mut digits = 0;
            while end < chars.len() {
                let d = chars[end];
                if d.is_ascii_digit() {
                    digits += 1;
                } else if !(" -.()+".contains(d)
                    && chars
                        .get(end + 1)
                        .is_some_and(|n| n.is_ascii_digit() || *n == '(' || *n == ' '))
                {
                    break;
                }
                end += 1;
            }
            while end > i && !chars[end - 1].is_ascii_digit() {
                end -= 1;
            }
            let word_after = chars.get(end).is_some_and(|c| c.is_alphanumeric());
            if (7..=15).contains(&digits) && !word_after {
                out.push_str("[PHONE]");
                count += 1;
                i = end;
                continue;
            }
            out.extend(&chars[i..end.max(i + 1)]);
            i = end.max(i + 1);
            continue;
        }
        out.push(c);
        i += 1;
    }
    (out, count)
}

impl Redactor {
    pub fn new(kinds: &[RedactKind]) -> Self {
        Self {
            email: kinds.contains(&RedactKind::Email),
            phone: kinds.contains(&RedactKind::Phone),
        }
    }

    /// Redacts in place; returns how many spans were replaced.
    pub fn redact(&self, text: &mut String) -> usize {
        let mut n = 0;
        if self.email {
            let (t, c) = redact_emails(text);
            *text = t;
            n += c;
        }
        if self.phone {
            let (t, c) = redact_phones(text);
            *text = t;
            n += c;
        }
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_emails_and_phones() {
        let r = Redactor::new(&[RedactKind::Email, RedactKind::Phone]);
        let mut s =
            "Mail jane.doe+x@example.co.uk or call +1 (555) 123-4567. Order 42 ships in 3 days."
                .to_string();
        assert_eq!(r.redact(&mut s), 2);
        assert_eq!(s, "Mail [EMAIL] or call [PHONE]. Order 42 ships in 3 days.");
    }

    #[test]
    fn leaves_non_pii_alone() {
        let r = Redactor::new(&[RedactKind::Email, RedactKind::Phone]);
        let mut s = "user@localhost, version 1.2.3, year 2024, @mention".to_string();
        assert_eq!(r.redact(&mut s), 0);
        assert_eq!(s, "user@localhost, version 1.2.3, year 2024, @mention");
    }
}
