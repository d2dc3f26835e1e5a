//! The collector against a real HTTP server on loopback: what the rules get, what `/metrics`
//! does not, and a target that fails.

use std::{
    io::{Read, Write},
    net::TcpListener,
    sync::{Arc, Mutex},
    thread,
    time::{Duration, Instant},
};

use super::*;
use crate::store::Store;

/// Answers every request with the current body (`None`: status 500).
fn server(body: Arc<Mutex<Option<String>>>) -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf);
            let reply = match body.lock().unwrap().clone() {
                Some(b) => format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: text/plain; version=0.0.4\r\ncontent-length: {}\r\n\r\n{b}",
                    b.len()
                ),
                None => "HTTP/1.1 500 Oops\r\ncontent-length: 0\r\n\r\n".to_string(),
            };
            let _ = s.write_all(reply.as_bytes());
        }
    });
    port
}

fn names(store: &Store) -> Vec<String> {
    let mut v: Vec<String> = store
        .samples()
        .into_iter()
        .filter(|(l, _)| l.get("job") == Some("t"))
        .map(|(l, v)| format!("{} {v}", l.name().unwrap_or_default()))
        .collect();
    v.sort();
    v
}

/// Collects until `want` holds of the rules' view of the target.
fn until(c: &mut Scrape, store: &Store, want: impl Fn(&[String]) -> bool) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        c.collect().unwrap();
        let got = names(store);
        if want(&got) {
            return got;
        }
        assert!(Instant::now() < deadline, "last seen: {got:?}");
        thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn scraped_series_reach_the_rules_not_metrics_and_go_stale_on_failure() {
    let body = Arc::new(Mutex::new(Some(
        "# TYPE vllm:num_requests_waiting gauge\nvllm:num_requests_waiting{model_name=\"m\"} 4\ngone 1\n".to_string(),
    )));
    let port = server(Arc::clone(&body));
    let cfg: ScrapeConfig = crate::config::Config::parse(
        "c.yaml",
        &format!("scrape:\n  - {{ job: t, url: \"http://127.0.0.1:{port}/metrics\", interval: 100ms, timeout: 100ms, sample_limit: 3 }}\n"),
    )
    .unwrap()
    .scrape;
    let mut store = Store::new();
    let wake = Wake::default();
    let mut c = Scrape::new(&cfg, Duration::from_secs(1), &wake, &mut store);
    let got = until(&mut c, &store, |g| g.iter().any(|s| s == "up 1"));
    for want in ["gone 1", "scrape_samples_scraped 2", "up 1"] {
        assert!(got.iter().any(|g| g == want), "{want}: {got:?}");
    }
    assert!(
        got.iter()
            .any(|g| g.starts_with("scrape_duration_seconds ")),
        "{got:?}"
    );
    assert!(
        got.contains(&"vllm:num_requests_waiting 4".to_string()),
        "{got:?}"
    );
    let text = store.encode_prometheus();
    assert!(!text.contains("vllm:") && !text.contains("\nup{"), "{text}");
    assert!(
        text.contains("nodewatch_scrape_target_up{scrape_job=\"t\",scrape_instance=\"127.0.0.1:"),
        "{text}"
    );

    // A series the target stops exposing is gone from the next scrape taken.
    *body.lock().unwrap() = Some("vllm:num_requests_waiting{model_name=\"m\"} 5\n".into());
    let got = until(&mut c, &store, |g| {
        g.iter().any(|s| s == "vllm:num_requests_waiting 5")
    });
    assert!(!got.iter().any(|s| s.starts_with("gone")), "{got:?}");

    // Over the sample limit: up 0, nothing of the target kept, the count still told.
    let many: String = (0..4).map(|i| format!("x{{i=\"{i}\"}} 1\n")).collect();
    *body.lock().unwrap() = Some(many);
    let got = until(&mut c, &store, |g| g.iter().any(|s| s == "up 0"));
    assert_eq!(got.len(), 3, "only the synthetic series: {got:?}");
    assert!(
        got.contains(&"scrape_samples_scraped 4".to_string()),
        "{got:?}"
    );
    assert!(
        store
            .encode_prometheus()
            .contains("reason=\"sample_limit\"} 1")
    );

    // A 500 fails the same way.
    *body.lock().unwrap() = None;
    until(&mut c, &store, |_| {
        store.encode_prometheus().contains("reason=\"status\"} 1")
    });
    let got = names(&store);
    assert_eq!(got.len(), 3, "{got:?}");
}

#[test]
fn a_refused_target_is_down_at_once() {
    let port = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let cfg: ScrapeConfig = crate::config::Config::parse(
        "c.yaml",
        &format!("scrape:\n  - {{ job: t, url: \"http://127.0.0.1:{port}/metrics\" }}\n"),
    )
    .unwrap()
    .scrape;
    let mut store = Store::new();
    let mut c = Scrape::new(&cfg, Duration::from_secs(1), &Wake::default(), &mut store);
    let got = until(&mut c, &store, |g| g.iter().any(|s| s == "up 0"));
    assert_eq!(got.len(), 3, "{got:?}");
}
