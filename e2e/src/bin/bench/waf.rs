//! `bench gateway-waf`: what the WAF and its rate rule cost. `GET /v1/users/me`
//! through a gateway with a full rule set (thousands of CIDRs, UA patterns,
//! a per-IP rate rule that never triggers) against one with the WAF off,
//! measured in the same run.

use crate::load::{Stats, drive};
use anyhow::{Context, bail};
use e2e::{Deployment, Options, fresh_mysql_database};
use serde_json::{Value, json};
use std::fmt::Write;
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Seconds each load phase runs.
    #[arg(long, default_value_t = 15)]
    pub seconds: u64,
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

async fn measure(args: &Args, gateway_args: &[&str]) -> anyhow::Result<Stats> {
    let database = fresh_mysql_database().await?;
    let deployment = Deployment::start_with_gateway_args(
        &database,
        Options {
            idsvc_args: e2e::CHEAP_ARGON2,
        },
        gateway_args,
    )
    .await?;
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(1024)
        .build()?;
    let base = deployment.gateway_url.clone();
    let client = deployment.tokens.web.clone();
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
    let access = Arc::new(
        tokens["access_token"]
            .as_str()
            .context("no access token")?
            .to_owned(),
    );
    let (base, client) = (Arc::new(base), Arc::new(client));
    Ok(drive(
        args.concurrency,
        Duration::from_secs(args.seconds),
        move |_, _| {
            let (http, base, client, access) =
                (http.clone(), base.clone(), client.clone(), access.clone());
            async move {
                let answer = http
                    .get(format!("{base}/v1/users/me"))
                    .header("Client-Token", client.as_str())
                    .header("User-Agent", "idbase-ios/5.2 (iPhone; iOS 18.1)")
                    .bearer_auth(access.as_str())
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
    .await)
}

pub async fn run(args: Args) -> anyhow::Result<Value> {
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("waf.toml");
    std::fs::write(&file, rules(args.cidrs))?;
    let file = file.to_str().context("temp path is not UTF-8")?.to_owned();
    let off = measure(&args, &[]).await?;
    eprintln!("me, WAF off   {off}");
    let on = measure(&args, &["--waf", &file]).await?;
    eprintln!("me, WAF on    {on}");
    if on.errors + off.errors > 0 {
        eprintln!("warning: some requests failed; their figures are not clean");
    }
    Ok(json!({
        "me_rps_waf_off": off.rps,
        "me_rps_waf_on": on.rps,
        "waf_cost_percent": (1.0 - on.rps / off.rps) * 100.0,
        "me_p50_ms_waf_off": off.p50_ms,
        "me_p99_ms_waf_off": off.p99_ms,
        "me_p50_ms_waf_on": on.p50_ms,
        "me_p99_ms_waf_on": on.p99_ms,
        "waf_ipv4_cidrs": args.cidrs,
        "waf_ipv6_cidrs": args.cidrs / 4,
        "seconds": args.seconds,
        "concurrency": args.concurrency,
    }))
}
