//! What routing on nested keys costs: the same Kubernetes-shaped records (as Fluent
//! Bit's kubernetes filter leaves them, with a top-level `TENANT_ID` beside), framed,
//! decoded and routed ingest-only, with the tenant taken from the top-level key and from
//! `$.kubernetes.namespace_name` (and with service and container id nested too).
//!
//! ```sh
//! cargo bench --bench route_paths                  # CPU seconds per million events
//! BIN=$(cargo bench --bench route_paths --no-run 2>&1 | sed -n 's/.*(\(.*route_paths-[^)]*\)).*/\1/p')
//! valgrind --tool=callgrind $BIN --callgrind nested packed 110   # instructions
//! ```
//!
//! `--callgrind CASE MODE ROUNDS` runs one case ROUNDS times (of 1000 events each) and
//! nothing else, for valgrind: the difference between two round counts, divided by the
//! events between them, is the instructions per event without the set-up
//! (scripts/bench-routing.sh does this).

// A benchmark, like a test, fails loudly on a broken fixture.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use bytes::Bytes;
use fwdgate::config::{InputConfig, RouteConfig};
use fwdgate::expand::{expand_request, ExpandLimits};
use fwdgate::forward::{decode_request, Limits, Scanner};
use fwdgate::route::Router;
use rmpv::Value;
use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

const EVENTS: usize = 1000;
const NAMESPACES: [&str; 4] = ["acme", "beta", "gamma", "delta"];

fn s(v: &str) -> Value {
    Value::from(v)
}

fn map(pairs: Vec<(&str, Value)>) -> Value {
    Value::Map(pairs.into_iter().map(|(k, v)| (s(k), v)).collect())
}

/// Record `i`: what the tail input (cri parser) and the kubernetes filter give, plus
/// the top-level keys a Docker-style configuration routes on.
fn record(i: usize) -> Value {
    let ns = NAMESPACES[i % NAMESPACES.len()];
    let app = format!("app-{}", i % 7);
    map(vec![
        ("time", s("2026-12-08T01:23:45.123456789Z")),
        ("stream", s("stdout")),
        ("_p", s("F")),
        (
            "log",
            s(&format!(
                "{i:06} GET /api/v1/orders/{i} 200 {}",
                "x".repeat(90)
            )),
        ),
        ("TENANT_ID", s(ns)),
        ("SERVICE_ID", s(&app)),
        ("container_id", s(&format!("{i:064x}"))),
        (
            "kubernetes",
            map(vec![
                ("pod_name", s(&format!("{app}-7d4b9c-x2x9q"))),
                ("namespace_name", s(ns)),
                ("pod_id", s("0d1f5ac1-32b5-4d8e-9a2c-1b7e0f6a4c3d")),
                (
                    "labels",
                    map(vec![
                        ("app.kubernetes.io/name", s(&app)),
                        ("app.kubernetes.io/instance", s("prod")),
                        ("pod-template-hash", s("7d4b9c")),
                        ("team", s("payments")),
                    ]),
                ),
                (
                    "annotations",
                    map(vec![
                        (
                            "kubectl.kubernetes.io/restartedAt",
                            s("2026-12-01T00:00:00Z"),
                        ),
                        ("prometheus.io/scrape", s("true")),
                    ]),
                ),
                ("host", s("node-1")),
                ("pod_ip", s("10.244.1.17")),
                ("container_name", s(&app)),
                ("docker_id", s(&format!("{:064x}", i + 1))),
                (
                    "container_hash",
                    s(&format!(
                        "registry.example/{app}@sha256:{}",
                        "ab".repeat(32)
                    )),
                ),
                ("container_image", s(&format!("registry.example/{app}:1.2"))),
            ]),
        ),
    ])
}

/// `[[EventTime, {}], record]`, as Fluent Bit 2.1 and later send an entry.
fn entry(i: usize) -> Value {
    let time = Value::Ext(
        0,
        [1_765_000_000u32.to_be_bytes(), (i as u32).to_be_bytes()].concat(),
    );
    Value::Array(vec![
        Value::Array(vec![time, Value::Map(Vec::new())]),
        record(i),
    ])
}

fn encode(v: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    rmpv::encode::write_value(&mut out, v).unwrap();
    out
}

fn input(mode: &str) -> Bytes {
    let tag = s("kube.var.log.containers.web");
    let request = match mode {
        "forward" => Value::Array(vec![tag, Value::Array((0..EVENTS).map(entry).collect())]),
        "packed" => {
            let stream: Vec<u8> = (0..EVENTS).flat_map(|i| encode(&entry(i))).collect();
            Value::Array(vec![
                tag,
                Value::Binary(stream),
                map(vec![("size", Value::from(EVENTS))]),
            ])
        }
        _ => panic!("mode {mode}: forward or packed"),
    };
    Bytes::from(encode(&request))
}

fn config(case: &str) -> RouteConfig {
    let nested = |keys: &[&str]| keys.iter().map(|k| k.to_string()).collect();
    match case {
        // Docker's shape: top-level keys.
        "top" => RouteConfig::default(),
        // Only the tenant nested.
        "tenant" => RouteConfig {
            tenant_keys: nested(&["$.kubernetes.namespace_name"]),
            ..RouteConfig::default()
        },
        // Tenant, service and container id nested, as deploy/kubernetes/containerd routes.
        "nested" => RouteConfig {
            tenant_keys: nested(&["$.kubernetes.namespace_name"]),
            service_keys: nested(&[
                "$['kubernetes']['labels']['app.kubernetes.io/name']",
                "$.kubernetes.container_name",
            ]),
            container_id_key: "$.kubernetes.docker_id".into(),
            ..RouteConfig::default()
        },
        _ => panic!("case {case}: top, tenant or nested"),
    }
}

struct Plane {
    scanner: Scanner,
    router: Router,
    limits: ExpandLimits,
    peer: Arc<str>,
}

impl Plane {
    fn new(case: &str) -> Plane {
        let input = InputConfig::default();
        Plane {
            scanner: Scanner::new(Limits {
                max_size: input.max_frame_size,
                max_depth: input.max_depth,
            }),
            router: Router::new(&config(case)).unwrap(),
            limits: ExpandLimits {
                max_depth: input.max_depth,
                max_decompressed: input.max_decompressed_size,
            },
            peer: Arc::from("127.0.0.1:40312"),
        }
    }

    /// Frames, decodes and routes the request; the tenants routed, for the check.
    fn run(&mut self, input: &Bytes) -> usize {
        let len = self.scanner.scan(input).unwrap().unwrap();
        let frame = input.slice(..len);
        let request = decode_request(&frame).unwrap();
        let (batch, _) =
            expand_request(frame, &request, &self.router, self.limits, &self.peer).unwrap();
        let batch = batch.unwrap();
        black_box(&batch);
        batch.events.len()
    }
}

/// Every case routes every event, to the same tenants.
fn check(mode: &str) {
    let data = input(mode);
    let tenants = |case: &str| {
        let plane = Plane::new(case);
        let mut scanner = Scanner::new(Limits {
            max_size: 1 << 30,
            max_depth: 128,
        });
        let len = scanner.scan(&data).unwrap().unwrap();
        let frame = data.slice(..len);
        let request = decode_request(&frame).unwrap();
        let (batch, _) =
            expand_request(frame, &request, &plane.router, plane.limits, &plane.peer).unwrap();
        let batch = batch.unwrap();
        batch
            .events
            .iter()
            .map(|e| e.tenant.unwrap().get(&batch.data).to_vec())
            .collect::<Vec<_>>()
    };
    let top = tenants("top");
    assert_eq!(top.len(), EVENTS);
    assert_eq!(top, tenants("tenant"), "{mode}");
    assert_eq!(top, tenants("nested"), "{mode}");
}

/// CPU time of this process (all threads: there is one).
fn cpu() -> Duration {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `t` is a valid timespec for clock_gettime to write.
    unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut t) };
    Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}

/// CPU seconds per million events of one case, the best of `rounds` runs of about 0.3 s.
fn cpu_per_million(case: &str, mode: &str, rounds: usize) -> f64 {
    let data = input(mode);
    let mut plane = Plane::new(case);
    let mut best = f64::MAX;
    for _ in 0..rounds {
        let start = cpu();
        let mut events = 0;
        while cpu() - start < Duration::from_millis(300) {
            events += plane.run(&data);
        }
        best = best.min((cpu() - start).as_secs_f64() * 1e6 / events as f64);
    }
    best
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--callgrind") {
        let (case, mode) = (&args[1], &args[2]);
        let rounds: usize = args[3].parse().unwrap();
        let data = input(mode);
        let mut plane = Plane::new(case);
        let events: usize = (0..rounds).map(|_| plane.run(&data)).sum();
        println!("{events}");
        return;
    }
    // `cargo bench` passes --bench; anything else is ignored.
    println!("CPU seconds per million events, ingest-only (frame, decode, route), best of 15 runs of 0.3 s:");
    println!(
        "{:<8} {:>8} {:>8} {:>8} {:>12} {:>12}",
        "mode", "top", "tenant", "nested", "tenant/top", "nested/top"
    );
    for mode in ["forward", "packed"] {
        check(mode);
        // Interleaved, so that a change in the machine's load hits every case alike.
        let (mut top, mut tenant, mut nested) = (f64::MAX, f64::MAX, f64::MAX);
        for _ in 0..3 {
            top = top.min(cpu_per_million("top", mode, 5));
            tenant = tenant.min(cpu_per_million("tenant", mode, 5));
            nested = nested.min(cpu_per_million("nested", mode, 5));
        }
        println!(
            "{mode:<8} {top:>8.3} {tenant:>8.3} {nested:>8.3} {:>12.2} {:>12.2}",
            tenant / top,
            nested / top
        );
    }
}
