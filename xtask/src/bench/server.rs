//! Throughput: wrk against the bundled sydney and against nginx, the two
//! alternating, each on its own port on 127.0.0.1.

use std::fs::{self, File};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use super::json::Json;
use super::proc::{self, Group};
use super::table::{self, Table};
use super::{Artifacts, Plan, Section, tools};
use crate::util;

/// Servers get this long to answer their first `200 Ok`.
const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// What one wrk run reported.
#[derive(Debug, Clone)]
struct Wrk {
    requests_per_s: f64,
    p99_ms: f64,
    /// wrk's "Socket errors" and "Non-2xx" lines, if any.
    errors: Vec<String>,
}

/// Runs the alternating wrk rounds.
pub fn run(plan: &Plan, art: &Artifacts) -> Result<Section> {
    let wrk = tools::path("wrk")?;
    let nginx = tools::path("nginx")?;
    let dir = art.dir.join("server");
    if dir.exists() {
        fs::remove_dir_all(&dir)?;
    }
    fs::create_dir_all(dir.join("nginx/logs"))?;

    let sydney_port = proc::free_port()?;
    let mut sydney_cmd = Command::new(&art.bundle);
    sydney_cmd
        .args(["start", "--", "--port", &sydney_port.to_string()])
        .args(["--bind", "127.0.0.1"])
        .env("SYDNEY_BUNDLE_DIR", dir.join("cache"))
        .env_remove("PORT")
        .env_remove("BIND")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(File::create(dir.join("sydney.stderr"))?);
    let _sydney = start(
        "sydney",
        &mut sydney_cmd,
        sydney_port,
        &dir.join("sydney.stderr"),
    )?;

    let nginx_port = proc::free_port()?;
    let prefix = dir.join("nginx");
    fs::write(prefix.join("nginx.conf"), nginx_conf(&prefix, nginx_port))?;
    let mut nginx_cmd = Command::new(&nginx);
    nginx_cmd
        .arg("-p")
        .arg(&prefix)
        .arg("-c")
        .arg(prefix.join("nginx.conf"))
        .arg("-e")
        .arg(prefix.join("logs/error.log"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(File::create(prefix.join("logs/stderr"))?);
    let _nginx = start(
        "nginx",
        &mut nginx_cmd,
        nginx_port,
        &prefix.join("logs/error.log"),
    )?;

    let servers = [("sydney", sydney_port), ("nginx", nginx_port)];
    let mut runs: Vec<Vec<Wrk>> = vec![Vec::new(), Vec::new()];
    for round in 1..=plan.wrk_rounds {
        for (i, (name, port)) in servers.iter().enumerate() {
            eprintln!(
                "bench: wrk -t1 -c64 -d{}s against {name}, round {round} of {}",
                plan.wrk_seconds, plan.wrk_rounds
            );
            let out = util::stdout(
                Command::new(&wrk)
                    .args(["-t1", "-c64", &format!("-d{}s", plan.wrk_seconds)])
                    .arg("--latency")
                    .arg(format!("http://127.0.0.1:{port}/")),
            )?;
            let parsed =
                parse_wrk(&out).with_context(|| format!("unexpected wrk output: {out}"))?;
            if !parsed.errors.is_empty() {
                bail!("wrk against {name}: {}", parsed.errors.join("; "));
            }
            runs[i].push(parsed);
        }
    }
    Ok(report(plan, &servers, &runs))
}

/// Spawns a server and waits for its first `200 Ok`.
fn start(name: &str, cmd: &mut Command, port: u16, log: &Path) -> Result<Group> {
    let start = Instant::now();
    let mut group = Group::spawn(cmd)?;
    proc::wait_for_ok(&mut group, port, start, READY_TIMEOUT).map_err(|err| {
        let log = fs::read_to_string(log).unwrap_or_default();
        err.context(format!(
            "{name} did not come up (log: {})",
            proc::tail(&log)
        ))
    })?;
    Ok(group)
}

/// The same job as sydney's: two workers, no logging, a fixed `200 Ok`.
fn nginx_conf(prefix: &Path, port: u16) -> String {
    let prefix = prefix.display();
    format!(
        "worker_processes 2;\n\
         daemon off;\n\
         pid {prefix}/nginx.pid;\n\
         error_log {prefix}/logs/error.log warn;\n\
         events {{ worker_connections 1024; }}\n\
         http {{\n\
         \x20   access_log off;\n\
         \x20   client_body_temp_path {prefix}/client_body;\n\
         \x20   server {{\n\
         \x20       listen 127.0.0.1:{port};\n\
         \x20       location / {{ default_type text/plain; return 200 \"Ok\"; }}\n\
         \x20   }}\n\
         }}\n"
    )
}

/// Reads req/s, the 99th percentile latency and any errors from wrk's
/// `--latency` report.
fn parse_wrk(out: &str) -> Option<Wrk> {
    let mut requests_per_s = None;
    let mut p99_ms = None;
    let mut errors = Vec::new();
    for line in out.lines().map(str::trim) {
        if let Some(rest) = line.strip_prefix("Requests/sec:") {
            requests_per_s = rest.trim().parse().ok();
        } else if let Some(rest) = line.strip_prefix("99%") {
            p99_ms = duration_ms(rest.trim());
        } else if line.starts_with("Socket errors") || line.starts_with("Non-2xx") {
            errors.push(line.to_owned());
        }
    }
    Some(Wrk {
        requests_per_s: requests_per_s?,
        p99_ms: p99_ms?,
        errors,
    })
}

/// `812.00us`, `1.23ms`, `2.00s` or `1.00m` in milliseconds.
pub fn duration_ms(text: &str) -> Option<f64> {
    let split = text.find(|c: char| c.is_ascii_alphabetic())?;
    let (number, unit) = text.split_at(split);
    let value: f64 = number.parse().ok()?;
    let scale = match unit {
        "us" => 1e-3,
        "ms" => 1.0,
        "s" => 1e3,
        "m" => 60e3,
        _ => return None,
    };
    Some(value * scale)
}

fn report(plan: &Plan, servers: &[(&str, u16)], runs: &[Vec<Wrk>]) -> Section {
    let mean =
        |runs: &[Wrk]| runs.iter().map(|r| r.requests_per_s).sum::<f64>() / runs.len() as f64;
    let nginx = mean(&runs[1]);
    let mut table = Table::new(
        format!(
            "Throughput: wrk -t1 -c64 -d{}s --latency, {} alternating runs each",
            plan.wrk_seconds, plan.wrk_rounds
        ),
        &[
            "server",
            ">req/s (runs)",
            ">mean req/s",
            ">p99 ms (runs)",
            ">vs nginx",
            "goal",
            "result",
        ],
    );
    let mut json = Vec::new();
    for ((name, _), runs) in servers.iter().zip(runs) {
        let rate = mean(runs);
        let ours = *name == "sydney";
        let ratio = rate / nginx;
        table.row(vec![
            (*name).into(),
            runs.iter()
                .map(|r| format!("{:.0}", r.requests_per_s))
                .collect::<Vec<_>>()
                .join(", "),
            format!("{rate:.0}"),
            runs.iter()
                .map(|r| table::ms(r.p99_ms))
                .collect::<Vec<_>>()
                .join(", "),
            table::ratio(ratio),
            if ours { ">= 1.1x nginx req/s" } else { "-" }.into(),
            if ours {
                format!("{} ({})", table::verdict(ratio >= 1.1), table::ratio(ratio))
            } else {
                "-".into()
            },
        ]);
        json.push(Json::obj([
            ("server", Json::from(*name)),
            ("mean_requests_per_s", Json::from(rate)),
            ("ratio_to_nginx", Json::from(ratio)),
            (
                "goal_met",
                if ours {
                    Json::from(ratio >= 1.1)
                } else {
                    Json::Null
                },
            ),
            (
                "runs",
                Json::Arr(
                    runs.iter()
                        .map(|r| {
                            Json::obj([
                                ("requests_per_s", Json::from(r.requests_per_s)),
                                ("p99_ms", Json::from(r.p99_ms)),
                            ])
                        })
                        .collect(),
                ),
            ),
        ]));
    }
    table.note(
        "sydney runs from the bundle (warm cache; the stub execs it); nginx with 2 workers, \
         access_log off, `return 200 \"Ok\"`. Runs alternate sydney, nginx, sydney, nginx.",
    );
    Section {
        key: "throughput",
        tables: vec![table],
        json: Json::obj([
            (
                "wrk",
                Json::from(format!("wrk -t1 -c64 -d{}s --latency", plan.wrk_seconds)),
            ),
            ("servers", Json::Arr(json)),
        ]),
        failures: Vec::new(),
        svgs: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WRK: &str = "Running 3s test @ http://127.0.0.1:40000/
  1 threads and 64 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   340.12us  100.00us   5.00ms   90.00%
    Req/Sec   190.00k     5.00k  200.00k    70.00%
  Latency Distribution
     50%  320.00us
     75%  350.00us
     90%  400.00us
     99%    1.20ms
  570000 requests in 3.00s, 60.00MB read
Requests/sec: 190000.50
Transfer/sec:     20.00MB
";

    #[test]
    fn parses_wrk() {
        let wrk = parse_wrk(WRK).unwrap();
        assert_eq!(wrk.requests_per_s, 190000.5);
        assert!((wrk.p99_ms - 1.2).abs() < 1e-9);
        assert!(wrk.errors.is_empty());
        let errors = format!("{WRK}  Non-2xx or 3xx responses: 12\n");
        assert_eq!(parse_wrk(&errors).unwrap().errors.len(), 1);
        assert_eq!(duration_ms("812.00us"), Some(0.812));
        assert!(parse_wrk("nothing").is_none());
    }
}
