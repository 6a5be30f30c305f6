//! `bench gateway-waf`: what the WAF and its rate rule cost. `GET /v1/users/me`
//! through a gateway with a full rule set (thousands of CIDRs, UA patterns,
//! a per-IP rate rule that never triggers) against one with the WAF off, both
//! in front of the same idsvc, in alternating phases; besides throughput, the
//! gateway's own CPU time per request, which the machine's noise moves less.

use crate::load::{Stats, cpu_seconds, drive};
use anyhow::{Context, bail};
use e2e::{Deployment, Options, fresh_mysql_database};
use serde_json::{Value, json};
use std::fmt::Write;
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Seconds each load phase runs.
    #[arg(long, default_value_t = 5)]
    pub seconds: u64,
    /// Rounds of one WAF-off and one WAF-on phase; medians are reported.
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// Concurrent `me` readers.
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// IPv4 CIDRs in the denylist (IPv6 gets a quarter as many).
    #[arg(long, default_value_t = 4000)]
    pub cidrs: usize,
}

use crate::PASSWORD;

/// A realistic web ACL: allow monitors, block scanners and reputation lists,
/// rate-limit per address with a limit no benchmark client reaches.
fn rules(cidrs: usize) -> String {
    let mut text = String::from(
        "[[rule]]\nname = \"monitors\"\naction = \"allow\"\nuser_agent = [\"^kube-probe/\", \"^ELB-HealthChecker/\"]\n\n\
         [[rule]]\nname = \"scanners\"\naction = \"block\"\n\
         user_agent = [\"(?i)sqlmap\", \"(?i)nikto\", \"(?i)masscan\", \"(?i)zgrab\", \"(?i)nmap\", \"(?i)python-requests/2\\\\.[0-9]+ scan\"]\n\n\
         [[rule]]\nname = \"reputation\"\naction = \"block\"\nip = [",
    );
    for i in 0..cidrs {
        // Spread over public space, never loopback.
        let _ = write!(
            text,
            "\"{}.{}.{}.0/24\",",
            11 + i % 200,
            (i / 200) % 256,
            i % 256
        );
    }
    for i in 0..cidrs / 4 {
        let _ = write!(text, "\"2001:db8:{i:x}::/48\",");
    }
    text.push_str("]\n\n[[rule]]\nname = \"per-ip\"\naction = \"rate\"\nlimit = 1000000000\nwindow_secs = 300\n");
    text
}

/// A member's `me` request, ready to send to any gateway of the deployment.
struct Reader {
    http: reqwest::Client,
    client: String,
    access: String,
}

impl Reader {
    async fn new(base: &str, client: String) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(1024)
            .build()?;
        let email = "bench-waf@example.com";
        let registered = http
            .post(format!("{base}/v1/users"))
            .header("Client-Token", &client)
            .json(&json!({"email": email, "password": PASSWORD}))
            .send()
            .await?;
        if !registered.status().is_success() {
            bail!("register: {}", registered.status());
        }
        let tokens: Value = http
            .post(format!("{base}/v1/sessions"))
            .header("Client-Token", &client)
            .json(&json!({"email": email, "password": PASSWORD}))
            .send()
            .await?
            .json()
            .await?;
        let access = tokens["access_token"]
            .as_str()
            .context("no access token")?
            .to_owned();
        Ok(Self {
            http,
            client,
            access,
        })
    }

    /// Closed-loop `me` load on the gateway at `base` (pid `gateway`), and
    /// the gateway's CPU microseconds per request meanwhile.
    async fn measure(
        self: &Arc<Self>,
        args: &Args,
        base: &str,
        gateway: u32,
    ) -> anyhow::Result<(Stats, f64)> {
        let url = Arc::new(format!("{base}/v1/users/me"));
        let cpu_before = cpu_seconds(gateway)?;
        let reader = self.clone();
        let stats = drive(
            args.concurrency,
            Duration::from_secs(args.seconds),
            move |_, _| {
                let (reader, url) = (reader.clone(), url.clone());
                async move {
                    let answer = reader
                        .http
                        .get(url.as_str())
                        .header("Client-Token", reader.client.as_str())
                        .header("User-Agent", "idbase-ios/5.2 (iPhone; iOS 18.1)")
                        .bearer_auth(reader.access.as_str())
                        .send()
                        .await?;
                    let status = answer.status();
                    answer.bytes().await?;
                    if !status.is_success() {
                        bail!("GET /v1/users/me: {status}");
                    }
                    Ok(())
                }
            },
        )
        .await;
        let cpu = cpu_seconds(gateway)? - cpu_before;
        let per_request_us = cpu * 1e6 / stats.requests.max(1) as f64;
        Ok((stats, per_request_us))
    }
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// One idsvc, two gateways in front of it (WAF off, WAF on), measured in
/// alternating phases so drift in the machine's load hits both alike.
pub async fn run(args: Args) -> anyhow::Result<Value> {
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("waf.toml");
    std::fs::write(&file, rules(args.cidrs))?;
    let file = file.to_str().context("temp path is not UTF-8")?.to_owned();
    let database = fresh_mysql_database().await?;
    let deployment = Deployment::start(
        &database,
        Options {
            binary: &e2e::idbase_binary()?,
            idsvc_args: e2e::CHEAP_ARGON2,
        },
    )
    .await?;
    let (waf_gateway, waf_url) = deployment.add_gateway(&["--waf", &file]).await?;
    let reader =
        Arc::new(Reader::new(&deployment.gateway_url, deployment.tokens.web.clone()).await?);
    let (mut off, mut on) = (Vec::new(), Vec::new());
    for round in 1..=args.rounds {
        let phase = reader
            .measure(&args, &deployment.gateway_url, deployment.gateway.0.id())
            .await?;
        eprintln!(
            "round {round}, WAF off  {}  gateway {:.0} µs CPU/request",
            phase.0, phase.1
        );
        off.push(phase);
        let phase = reader.measure(&args, &waf_url, waf_gateway.0.id()).await?;
        eprintln!(
            "round {round}, WAF on   {}  gateway {:.0} µs CPU/request",
            phase.0, phase.1
        );
        on.push(phase);
    }
    if off.iter().chain(&on).any(|(stats, _)| stats.errors > 0) {
        eprintln!("warning: some requests failed; their figures are not clean");
    }
    let rps = |phases: &[(Stats, f64)]| median(phases.iter().map(|(s, _)| s.rps).collect());
    let p99 = |phases: &[(Stats, f64)]| median(phases.iter().map(|(s, _)| s.p99_ms).collect());
    let cpu = |phases: &[(Stats, f64)]| median(phases.iter().map(|(_, us)| *us).collect());
    let (rps_off, rps_on) = (rps(&off), rps(&on));
    let (cpu_off, cpu_on) = (cpu(&off), cpu(&on));
    Ok(json!({
        "me_rps_waf_off": rps_off,
        "me_rps_waf_on": rps_on,
        "waf_cost_percent": (1.0 - rps_on / rps_off) * 100.0,
        "me_p99_ms_waf_off": p99(&off),
        "me_p99_ms_waf_on": p99(&on),
        "gateway_cpu_us_per_request_waf_off": cpu_off,
        "gateway_cpu_us_per_request_waf_on": cpu_on,
        "waf_cpu_cost_percent": (cpu_on / cpu_off - 1.0) * 100.0,
        "waf_ipv4_cidrs": args.cidrs,
        "waf_ipv6_cidrs": args.cidrs / 4,
        "rounds": args.rounds,
        "seconds": args.seconds,
        "concurrency": args.concurrency,
    }))
}
