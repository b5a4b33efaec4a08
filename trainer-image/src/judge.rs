//! The LLM-as-judge of `evaluate`: any OpenAI-compatible chat endpoint compares the base
//! model's and the adapter's answers, each pair in both orders; verdicts combine as
//! `tailor_wire::eval` documents. A judge that times out, answers 5xx/429 or something that is
//! not a verdict is tried again (`maxAttempts`, exponential backoff) and, failing that, the
//! pair is counted as unjudged: the run goes on.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Context;
use backon::{ExponentialBuilder, Retryable};
use futures::StreamExt;
use serde::Serialize;
use serde_json::{Value, json};
use tailor_wire::eval::{
    JudgeConfig, JudgeSummary, VERDICT_CHOICES, Verdict, pair_outcome, wilson_interval,
};

/// The default judge prompt (a minijinja template; `judge.promptFile` replaces it).
pub const DEFAULT_PROMPT: &str = r#"You are comparing two answers to the same request.{% if reference %} A reference answer is given: prefer the answer that agrees with it in substance.{% endif %}

Request:
{{ question }}
{% if reference %}
Reference answer:
{{ reference }}
{% endif %}
Answer A:
{{ answer_a }}

Answer B:
{{ answer_b }}

Judge accuracy, helpfulness, clarity and tone; the order of the answers must not matter.
Reply with JSON only: {"winner": "A" or "B" or "tie", "reason": "one sentence"}"#;

/// One example's answers.
pub struct Question {
    pub question: String,
    pub reference: String,
    pub base: String,
    pub adapter: String,
}

/// One order's judgement as recorded in the samples.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Judgement {
    /// What the judge said ("A", "B" or "tie").
    pub winner: String,
    /// The same from the adapter's side.
    pub verdict: Verdict,
    pub reason: String,
}

/// One order of a pair: its judgement, or why there is none.
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum Order {
    Judged(Judgement),
    Failed { error: String },
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PairRecord {
    /// The adapter's answer shown as "A", then as "B".
    pub adapter_as_a: Order,
    pub adapter_as_b: Order,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outcome: Option<Verdict>,
}

/// Why one judgement failed; `kind` is what the report counts.
#[derive(Debug)]
struct Failure {
    kind: String,
    detail: String,
    retryable: bool,
}

impl Failure {
    fn new(kind: impl Into<String>, detail: impl Into<String>, retryable: bool) -> Self {
        Self {
            kind: kind.into(),
            detail: detail.into(),
            retryable,
        }
    }
}

/// "A", "B" or "tie" from a judge's reply: a JSON object, alone or inside other text (a code
/// fence, a sentence before it), with `winner` and an optional `reason`/`reasoning`.
pub fn parse_verdict(content: &str) -> Result<(String, String), String> {
    let object = serde_json::from_str::<Value>(content.trim())
        .ok()
        .filter(Value::is_object)
        .or_else(|| {
            let (start, end) = (content.find('{')?, content.rfind('}')?);
            (start < end)
                .then(|| serde_json::from_str::<Value>(&content[start..=end]).ok())
                .flatten()
        })
        .ok_or_else(|| format!("no JSON object in the judge's reply: {:?}", clip(content)))?;
    let winner = object["winner"]
        .as_str()
        .ok_or_else(|| format!("the judge's reply has no string \"winner\": {object}"))?;
    let winner = match winner.trim().to_ascii_lowercase().as_str() {
        "a" => "A",
        "b" => "B",
        "tie" | "draw" | "equal" => "tie",
        other => {
            return Err(format!(
                "winner {other:?}: expected \"A\", \"B\" or \"tie\""
            ));
        }
    };
    let reason = object["reason"]
        .as_str()
        .or_else(|| object["reasoning"].as_str())
        .unwrap_or("")
        .to_string();
    Ok((winner.to_string(), reason))
}

fn clip(s: &str) -> String {
    let mut c: String = s.chars().take(200).collect();
    if c.len() < s.len() {
        c.push('…');
    }
    c
}

/// The adapter's verdict from what the judge said, given where the adapter's answer was shown.
fn verdict(winner: &str, adapter_is_a: bool) -> Verdict {
    match (winner, adapter_is_a) {
        ("tie", _) => Verdict::Tie,
        ("A", true) | ("B", false) => Verdict::Win,
        _ => Verdict::Loss,
    }
}

/// `…/v1/chat/completions` from a base URL given with or without `/v1`.
pub fn chat_url(base: &str) -> String {
    let b = base.trim_end_matches('/');
    let b = b.strip_suffix("/chat/completions").unwrap_or(b);
    if b.ends_with("/v1") {
        format!("{b}/chat/completions")
    } else {
        format!("{b}/v1/chat/completions")
    }
}

pub struct Judge {
    cfg: JudgeConfig,
    url: String,
    api_key: Option<String>,
    env: minijinja::Environment<'static>,
    client: reqwest::Client,
}

impl Judge {
    pub fn new(cfg: &JudgeConfig) -> anyhow::Result<Self> {
        let api_key = match &cfg.api_key_file {
            Some(p) => Some(
                std::fs::read_to_string(p)
                    .with_context(|| format!("reading judge.apiKeyFile {}", p.display()))?
                    .trim()
                    .to_string(),
            ),
            None => None,
        };
        let source = match &cfg.prompt_file {
            Some(p) => std::fs::read_to_string(p)
                .with_context(|| format!("reading judge.promptFile {}", p.display()))?,
            None => DEFAULT_PROMPT.to_string(),
        };
        let mut env = minijinja::Environment::new();
        env.add_template_owned("judge", source)
            .context("judge prompt template")?;
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(cfg.timeout_seconds.max(1)))
            .build()
            .context("building the judge's HTTP client")?;
        Ok(Self {
            url: chat_url(&cfg.url),
            cfg: cfg.clone(),
            api_key,
            env,
            client,
        })
    }

    fn prompt(&self, q: &Question, adapter_is_a: bool) -> anyhow::Result<String> {
        let (a, b) = if adapter_is_a {
            (&q.adapter, &q.base)
        } else {
            (&q.base, &q.adapter)
        };
        Ok(self
            .env
            .get_template("judge")?
            .render(minijinja::context! {
                question => &q.question,
                reference => &q.reference,
                answer_a => a,
                answer_b => b,
            })?)
    }

    /// One request, one verdict.
    async fn ask(&self, prompt: &str) -> Result<(String, String), Failure> {
        let mut body = json!({
            "model": self.cfg.model,
            "messages": [{"role": "user", "content": prompt}],
            "temperature": 0,
            "max_tokens": 256,
        });
        if self.cfg.structured_outputs {
            body["structured_outputs"] = json!({ "choice": VERDICT_CHOICES });
        }
        let mut req = self.client.post(&self.url).json(&body);
        if let Some(k) = &self.api_key {
            req = req.bearer_auth(k);
        }
        let resp = req.send().await.map_err(|e| {
            if e.is_timeout() {
                Failure::new(
                    "timeout",
                    format!("no answer in {}s", self.cfg.timeout_seconds),
                    true,
                )
            } else {
                // reqwest's message names the URL, never the token.
                Failure::new("unreachable", e.to_string(), true)
            }
        })?;
        let status = resp.status();
        let body = resp.text().await.map_err(|e| {
            let kind = if e.is_timeout() {
                "timeout"
            } else {
                "unreachable"
            };
            Failure::new(kind, e.to_string(), true)
        })?;
        if !status.is_success() {
            let retryable = status.is_server_error() || status.as_u16() == 429;
            return Err(Failure::new(
                format!("http {}", status.as_u16()),
                clip(&body),
                retryable,
            ));
        }
        let content = serde_json::from_str::<Value>(&body)
            .ok()
            .and_then(|v| {
                v["choices"][0]["message"]["content"]
                    .as_str()
                    .map(String::from)
            })
            .ok_or_else(|| {
                Failure::new(
                    "malformed response",
                    format!("not a chat completion: {}", clip(&body)),
                    true,
                )
            })?;
        parse_verdict(&content).map_err(|e| Failure::new("malformed verdict", e, true))
    }

    /// One order of one pair, with retries; the number of retries made comes back too.
    async fn judge_order(
        &self,
        q: &Question,
        adapter_is_a: bool,
    ) -> (Result<Judgement, Failure>, usize) {
        let prompt = match self.prompt(q, adapter_is_a) {
            Ok(p) => p,
            Err(e) => return (Err(Failure::new("prompt", format!("{e:#}"), false)), 0),
        };
        let retries = std::sync::atomic::AtomicUsize::new(0);
        let backoff = ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(200))
            .with_max_delay(Duration::from_secs(10))
            .with_max_times(self.cfg.max_attempts.saturating_sub(1))
            .with_jitter();
        let r = (|| self.ask(&prompt))
            .retry(backoff)
            .when(|f: &Failure| f.retryable)
            .notify(|f: &Failure, after: Duration| {
                retries.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tracing::warn!(kind = %f.kind, detail = %f.detail, ?after, "judge request failed; retrying");
            })
            .await;
        let r = r.map(|(winner, reason)| Judgement {
            verdict: verdict(&winner, adapter_is_a),
            winner,
            reason,
        });
        (r, retries.into_inner())
    }

    /// Judges every pair in both orders. Errors only when the runtime cannot start: a judge
    /// that fails is counted in the summary.
    pub fn judge_all(&self, qs: &[Question]) -> anyhow::Result<(JudgeSummary, Vec<PairRecord>)> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .context("starting the judge's runtime")?;
        let orders: Vec<(usize, bool)> = (0..qs.len())
            .flat_map(|i| [(i, true), (i, false)])
            .collect();
        let results: Vec<_> = rt.block_on(
            futures::stream::iter(orders)
                .map(|(i, a_first)| self.judge_order(&qs[i], a_first))
                .buffered(self.cfg.concurrency.max(1))
                .collect(),
        );
        let mut s = JudgeSummary {
            model: self.cfg.model.clone(),
            pairs: qs.len(),
            ..Default::default()
        };
        let mut failure_kinds: BTreeMap<String, usize> = BTreeMap::new();
        let mut records = Vec::with_capacity(qs.len());
        let mut it = results.into_iter();
        while let (Some((first, r1)), Some((second, r2))) = (it.next(), it.next()) {
            s.retries += r1 + r2;
            s.requests += 2 + r1 + r2;
            let mut keep = |r: Result<Judgement, Failure>| {
                r.map_err(|f| {
                    *failure_kinds.entry(f.kind.clone()).or_default() += 1;
                    format!("{}: {}", f.kind, f.detail)
                })
            };
            let (first, second) = (keep(first), keep(second));
            if let Ok(j) = &first
                && j.verdict == Verdict::Win
            {
                s.wins_as_a += 1;
            }
            if let Ok(j) = &second
                && j.verdict == Verdict::Win
            {
                s.wins_as_b += 1;
            }
            let outcome = match (&first, &second) {
                (Ok(a), Ok(b)) => Some(pair_outcome(a.verdict, b.verdict)),
                _ => None,
            };
            match outcome {
                Some(Verdict::Win) => s.wins += 1,
                Some(Verdict::Tie) => s.ties += 1,
                Some(Verdict::Loss) => s.losses += 1,
                None => s.unjudged += 1,
            }
            let order = |r: Result<Judgement, String>| match r {
                Ok(j) => Order::Judged(j),
                Err(error) => Order::Failed { error },
            };
            records.push(PairRecord {
                adapter_as_a: order(first),
                adapter_as_b: order(second),
                outcome,
            });
        }
        s.failures = failure_kinds.values().sum();
        s.failure_kinds = failure_kinds;
        s.judged = s.wins + s.ties + s.losses;
        if s.judged > 0 {
            s.win_rate = Some(s.wins as f64 / s.judged as f64);
            if let Some((lo, hi)) = wilson_interval(s.wins, s.judged) {
                s.win_rate_lower = Some(lo);
                s.win_rate_upper = Some(hi);
            }
        }
        tracing::info!(
            judged = s.judged,
            unjudged = s.unjudged,
            wins = s.wins,
            ties = s.ties,
            losses = s.losses,
            "judged"
        );
        Ok((s, records))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdicts_are_read_from_json_alone_or_inside_text() {
        assert_eq!(
            parse_verdict(r#"{"winner": "A", "reason": "clearer"}"#),
            Ok(("A".into(), "clearer".into()))
        );
        assert_eq!(
            parse_verdict("Sure.\n```json\n{\"winner\":\"tie\",\"reasoning\":\"same\"}\n```"),
            Ok(("tie".into(), "same".into()))
        );
        assert_eq!(
            parse_verdict(r#"{"winner":"b"}"#),
            Ok(("B".into(), "".into()))
        );
        for bad in [
            "A is better",
            r#"{"winner": "C"}"#,
            r#"{"win": "A"}"#,
            "{",
            "",
        ] {
            assert!(parse_verdict(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_adapters_side_depends_on_where_its_answer_was_shown() {
        assert_eq!(verdict("A", true), Verdict::Win);
        assert_eq!(verdict("A", false), Verdict::Loss);
        assert_eq!(verdict("B", false), Verdict::Win);
        assert_eq!(verdict("tie", true), Verdict::Tie);
    }

    #[test]
    fn chat_url_takes_a_base_with_or_without_v1() {
        for base in [
            "http://j:8000",
            "http://j:8000/",
            "http://j:8000/v1",
            "http://j:8000/v1/chat/completions",
        ] {
            assert_eq!(
                chat_url(base),
                "http://j:8000/v1/chat/completions",
                "{base}"
            );
        }
    }

    #[test]
    fn the_default_prompt_renders_both_answers_and_the_reference() {
        let j = Judge::new(&JudgeConfig {
            url: "http://j".into(),
            model: "m".into(),
            api_key_file: None,
            prompt_file: None,
            timeout_seconds: 1,
            max_attempts: 1,
            concurrency: 1,
            structured_outputs: false,
        })
        .expect("judge");
        let q = Question {
            question: "user: how?".into(),
            reference: "like this".into(),
            base: "BASE".into(),
            adapter: "TUNED".into(),
        };
        let p = j.prompt(&q, true).expect("render");
        assert!(p.find("TUNED") < p.find("BASE"), "{p}");
        assert!(p.contains("Reference answer:\nlike this"), "{p}");
        let p = j.prompt(&q, false).expect("render");
        assert!(p.find("BASE") < p.find("TUNED"), "{p}");
    }
}
