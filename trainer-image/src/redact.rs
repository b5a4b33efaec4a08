//! PII redaction without regular expressions: small scanners for e-mail addresses, payment card
//! numbers (Luhn-checked), IPv4 addresses and phone numbers, replaced by `[EMAIL]`, `[CARD]`,
//! `[IP]` and `[PHONE]`. The kinds and their names are those of the Dataset API
//! (`spec.preparation.redact`).

pub use tailor_wire::prepare::RedactKind;

pub struct Redactor {
    email: bool,
    phone: bool,
    card: bool,
    ip: bool,
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

/// Replaces the spans of one kind; returns the new text and how many were replaced.
type Scanner = fn(&str) -> (String, usize);

/// Whether a number passes the Luhn check every payment card number passes.
fn luhn(digits: &[u32]) -> bool {
    let sum: u32 = digits
        .iter()
        .rev()
        .enumerate()
        .map(|(i, &d)| {
            if i % 2 == 1 {
                let x = d * 2;
                if x > 9 { x - 9 } else { x }
            } else {
                d
            }
        })
        .sum();
    sum.is_multiple_of(10)
}

/// A digit that starts a number: not inside a word, another number or a replaced span.
fn starts_number(chars: &[char], i: usize) -> bool {
    chars[i].is_ascii_digit()
        && (i == 0 || !(chars[i - 1].is_alphanumeric() || "[.".contains(chars[i - 1])))
}

/// Card numbers: 13 to 19 digits, optionally grouped by single spaces or hyphens, Luhn-valid.
fn redact_cards(text: &str) -> (String, usize) {
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let mut count = 0;
    let mut i = 0;
    while i < chars.len() {
        if starts_number(&chars, i) {
            let mut digits = Vec::new();
            let mut j = i;
            let mut end = i;
            while j < chars.len() && digits.len() <= 19 {
                if let Some(d) = chars[j].to_digit(10) {
                    digits.push(d);
                    j += 1;
                    end = j;
                } else if (chars[j] == ' ' || chars[j] == '-')
                    && chars.get(j + 1).is_some_and(char::is_ascii_digit)
                {
                    j += 1;
                } else {
                    break;
                }
            }
            let word_after = chars
                .get(end)
                .is_some_and(|c| c.is_alphanumeric() || *c == '-');
            if (13..=19).contains(&digits.len()) && !word_after && luhn(&digits) {
                out.push_str("[CARD]");
                count += 1;
                i = end;
                continue;
            }
        }
        out.push(chars[i]);
        i += 1;
    }
    (out, count)
}

/// IPv4 addresses: four dot-separated decimal octets, each at most 255, and not part of a
/// longer dotted number (a version such as 1.2.3.4.5).
fn redact_ips(text: &str) -> (String, usize) {
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let mut count = 0;
    let mut i = 0;
    while i < chars.len() {
        if starts_number(&chars, i) {
            let mut j = i;
            let mut octets = 0;
            let mut ok = true;
            while octets < 4 {
                let start = j;
                let mut value = 0u32;
                while j < chars.len() && j - start < 3 {
                    let Some(d) = chars[j].to_digit(10) else {
                        break;
                    };
                    value = value * 10 + d;
                    j += 1;
                }
                if j == start || value > 255 || chars.get(j).is_some_and(char::is_ascii_digit) {
                    ok = false;
                    break;
                }
                octets += 1;
                if octets < 4 {
                    if chars.get(j) == Some(&'.')
                        && chars.get(j + 1).is_some_and(char::is_ascii_digit)
                    {
                        j += 1;
                    } else {
                        ok = false;
                        break;
                    }
                }
            }
            let continues = chars.get(j).is_some_and(|c| c.is_alphanumeric())
                || (chars.get(j) == Some(&'.')
                    && chars.get(j + 1).is_some_and(char::is_ascii_digit));
            if ok && !continues {
                out.push_str("[IP]");
                count += 1;
                i = j;
                continue;
            }
        }
        out.push(chars[i]);
        i += 1;
    }
    (out, count)
}

impl Redactor {
    pub fn new(kinds: &[RedactKind]) -> Self {
        Self {
            email: kinds.contains(&RedactKind::Email),
            phone: kinds.contains(&RedactKind::Phone),
            card: kinds.contains(&RedactKind::CreditCard),
            ip: kinds.contains(&RedactKind::IpAddress),
        }
    }

    /// Redacts in place; returns how many spans were replaced. Cards and addresses go before
    /// phone numbers, whose looser scanner would otherwise take a dotted address or part of a
    /// card number.
    pub fn redact(&self, text: &mut String) -> usize {
        let mut n = 0;
        let scanners: [(bool, Scanner); 4] = [
            (self.email, redact_emails),
            (self.card, redact_cards),
            (self.ip, redact_ips),
            (self.phone, redact_phones),
        ];
        for (on, scan) in scanners {
            if on {
                let (t, c) = scan(text);
                *text = t;
                n += c;
            }
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
    fn redacts_luhn_valid_card_numbers_only() {
        let r = Redactor::new(&[RedactKind::CreditCard]);
        let mut s =
            "Visa 4111 1111 1111 1111, Amex 3782-822463-10005, MC 5555555555554444.".to_string();
        assert_eq!(r.redact(&mut s), 3);
        assert_eq!(s, "Visa [CARD], Amex [CARD], MC [CARD].");
        // Luhn-invalid, too short, too long, or part of a word: left alone.
        let mut s =
            "4111 1111 1111 1112, order 123456789012, id 41111111111111111111, x4111111111111111"
                .to_string();
        let before = s.clone();
        assert_eq!(r.redact(&mut s), 0);
        assert_eq!(s, before);
    }

    #[test]
    fn redacts_ipv4_addresses_but_not_versions() {
        let r = Redactor::new(&[RedactKind::IpAddress]);
        let mut s = "from 192.168.0.17. Gateway (10.0.0.1), dns 8.8.8.8".to_string();
        assert_eq!(r.redact(&mut s), 3);
        assert_eq!(s, "from [IP]. Gateway ([IP]), dns [IP]");
        let mut s = "version 1.2.3, build 1.2.3.4.5, 256.1.1.1, 1.2.3.4a, v10.0.0.1".to_string();
        let before = s.clone();
        assert_eq!(r.redact(&mut s), 0);
        assert_eq!(s, before);
    }

    #[test]
    fn all_kinds_together_do_not_overlap() {
        let r = Redactor::new(&[
            RedactKind::Email,
            RedactKind::Phone,
            RedactKind::CreditCard,
            RedactKind::IpAddress,
        ]);
        let mut s = "Host 10.20.30.40, card 4242 4242 4242 4242, call +1 555 123 4567 or a@b.io"
            .to_string();
        assert_eq!(r.redact(&mut s), 4);
        assert_eq!(s, "Host [IP], card [CARD], call [PHONE] or [EMAIL]");
    }

    #[test]
    fn kinds_use_the_dataset_api_names() {
        let kinds: Vec<RedactKind> =
            serde_json::from_str(r#"["email","phone","creditCard","ipAddress"]"#).expect("parse");
        assert_eq!(
            kinds,
            [
                RedactKind::Email,
                RedactKind::Phone,
                RedactKind::CreditCard,
                RedactKind::IpAddress
            ]
        );
    }

    #[test]
    fn leaves_non_pii_alone() {
        let r = Redactor::new(&[RedactKind::Email, RedactKind::Phone]);
        let mut s = "user@localhost, version 1.2.3, year 2024, @mention".to_string();
        assert_eq!(r.redact(&mut s), 0);
        assert_eq!(s, "user@localhost, version 1.2.3, year 2024, @mention");
    }
}
