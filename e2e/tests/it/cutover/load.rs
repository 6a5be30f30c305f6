//! Reads and writes from all three client classes through two gateways
//! while the phase walks 0→1→2 (ramped 10, 50, 100)→3 (ramped)→4→3→4: no
//! 5xx but writes paused by the fence (503 + Retry-After, retried), every
//! acknowledged write readable at once, and at the end every acknowledged
//! write present in idbase.

use super::{Answer, Api, Class, Session, start};
use e2e::cutover::{seeded_email, seeded_password};
use reqwest::StatusCode;
use serde_json::json;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

const TASKS_PER_CLASS: usize = 2;
/// Seeded members each task owns (ids after the other tests' range).
const MEMBERS_PER_TASK: i64 = 3;
const FIRST_MEMBER: i64 = 150;

/// What one task saw and had acknowledged.
#[derive(Default)]
struct Outcome {
    /// Member id → (email, password, last acknowledged phone digits).
    updated: HashMap<i64, (String, String, String)>,
    /// Members registered (email, password).
    registered: Vec<(String, String)>,
    /// Answers that break the rules.
    failures: Vec<String>,
    paused: u64,
}

struct Shared {
    stop: AtomicBool,
    acknowledged: AtomicU64,
}

/// Sends `request` until it is not paused by the write fence (503
/// writes-paused with Retry-After); counts the pauses.
async fn unpaused<F, Fut>(outcome: &mut Outcome, mut request: F) -> Answer
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Answer>,
{
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let answer = request().await;
        if answer.status != StatusCode::SERVICE_UNAVAILABLE
            || answer.problem() != Some("writes-paused")
        {
            return answer;
        }
        if answer.retry_after.is_none() {
            outcome
                .failures
                .push(format!("writes-paused without Retry-After: {answer:?}"));
        }
        outcome.paused += 1;
        assert!(Instant::now() < deadline, "writes paused for 30 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn worker(apis: Vec<Api>, class: Class, task: usize, shared: Arc<Shared>) -> Outcome {
    let mut outcome = Outcome::default();
    let first = FIRST_MEMBER + (task as i64) * MEMBERS_PER_TASK;
    let mut sessions: HashMap<i64, Session> = HashMap::new();
    let mut seq: u64 = 0;
    while !shared.stop.load(Ordering::Relaxed) {
        seq += 1;
        let api = &apis[seq as usize % apis.len()];
        let id = first + (seq as i64 % MEMBERS_PER_TASK);
        let (email, password) = (seeded_email(id), seeded_password(id));
        let session = match sessions.get(&id) {
            Some(session) => session.clone(),
            None => {
                let login = api.login(class, &email, &password).await;
                if login.status != StatusCode::OK {
                    outcome
                        .failures
                        .push(format!("login {id} as {class:?}: {login:?}"));
                    continue;
                }
                Session::from(&login)
            }
        };
        // 090-1xxx-xxxx: a valid Japanese mobile number, unique per write.
        let phone = format!("0901{:07}", task as u64 * 100_000 + seq);
        let body = json!({"phone": phone, "current_password": password});
        let answer = unpaused(&mut outcome, || {
            api.patch_me(class, Some(&session.access), body.clone())
        })
        .await;
        match (answer.status, answer.problem()) {
            (StatusCode::OK, _) => {
                shared.acknowledged.fetch_add(1, Ordering::Relaxed);
                outcome
                    .updated
                    .insert(id, (email.clone(), password.clone(), phone[1..].to_owned()));
                // Read your write, whichever side serves the read.
                let me = api.me(class, Some(&session.access)).await;
                let shown = me.body["phone"].as_str().unwrap_or_default();
                if me.status != StatusCode::OK || !shown.ends_with(&phone[1..]) {
                    outcome.failures.push(format!(
                        "{class:?} {id}: PATCH acknowledged {phone}, then read {me:?}"
                    ));
                }
                sessions.insert(id, session);
            }
            (StatusCode::UNAUTHORIZED, _) => {
                // token-upgrade-required, or a token of a retired side:
                // refresh (the exchange, from phase 3) and go on.
                let refreshed = api.refresh(class, &session.refresh).await;
                if refreshed.status == StatusCode::OK {
                    sessions.insert(id, Session::from(&refreshed));
                } else {
                    outcome.failures.push(format!(
                        "{class:?} {id}: refresh after {answer:?}: {refreshed:?}"
                    ));
                    sessions.remove(&id);
                }
            }
            _ => outcome
                .failures
                .push(format!("{class:?} {id}: PATCH: {answer:?}")),
        }
        if seq.is_multiple_of(4) {
            let email = format!("load-{task}-{seq}@example.com");
            let password = format!("load password {task} {seq}");
            let answer = unpaused(&mut outcome, || api.register(class, &email, &password)).await;
            if answer.status == StatusCode::CREATED {
                shared.acknowledged.fetch_add(1, Ordering::Relaxed);
                outcome.registered.push((email, password));
            } else {
                outcome
                    .failures
                    .push(format!("{class:?}: register {email}: {answer:?}"));
            }
        }
    }
    outcome
}

#[tokio::test]
async fn the_whole_walk_under_load_loses_no_write() {
    let cutover = start(2, &[]).await;
    let apis: Vec<Api> = cutover
        .gateway_urls()
        .iter()
        .map(|url| Api::new(url, &cutover.tokens))
        .collect();
    let shared = Arc::new(Shared {
        stop: AtomicBool::new(false),
        acknowledged: AtomicU64::new(0),
    });
    let mut workers = Vec::new();
    for (c, class) in Class::ALL.into_iter().enumerate() {
        for k in 0..TASKS_PER_CLASS {
            let task = c * TASKS_PER_CLASS + k;
            workers.push(tokio::spawn(worker(
                apis.clone(),
                class,
                task,
                shared.clone(),
            )));
        }
    }
    // Each step waits for a few acknowledged writes under the new phase.
    let progress = |shared: Arc<Shared>| async move {
        let from = shared.acknowledged.load(Ordering::Relaxed);
        let deadline = Instant::now() + Duration::from_secs(30);
        while shared.acknowledged.load(Ordering::Relaxed) < from + 6 {
            assert!(Instant::now() < deadline, "no progress under load for 30 s");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    progress(shared.clone()).await;
    let walk = [
        (1, 100),
        (2, 10),
        (2, 50),
        (2, 100),
        (3, 10),
        (3, 50),
        (3, 100),
        (4, 100),
        (3, 100),
        (4, 100),
    ];
    for (target, weight) in walk {
        cutover.move_to(target, weight).await.unwrap();
        if target == 1 {
            cutover.migrate_members().unwrap();
        }
        progress(shared.clone()).await;
    }
    shared.stop.store(true, Ordering::Relaxed);
    let mut failures = Vec::new();
    let mut updated = HashMap::new();
    let mut registered = Vec::new();
    let mut paused = 0;
    for worker in workers {
        let outcome = worker.await.unwrap();
        failures.extend(outcome.failures);
        updated.extend(outcome.updated);
        registered.extend(outcome.registered);
        paused += outcome.paused;
    }
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
    eprintln!(
        "load: {} acknowledged writes, {paused} paused by the fence",
        shared.acknowledged.load(Ordering::Relaxed)
    );

    // Phase 4: logins and reads are idbase's. Every acknowledged write is there.
    let api = &apis[0];
    for (id, (email, password, phone)) in &updated {
        let login = api.login(Class::Web, email, password).await;
        assert_eq!(
            (login.status, login.side),
            (StatusCode::OK, super::Side::Idbase),
            "{id}: {login:?}"
        );
        let me = api
            .me(Class::Web, Some(&Session::from(&login).access))
            .await;
        assert_eq!(me.side, super::Side::Idbase);
        assert!(
            me.body["phone"]
                .as_str()
                .is_some_and(|shown| shown.ends_with(phone.as_str())),
            "member {id}: last acknowledged phone {phone}, idbase has {me:?}"
        );
    }
    for (email, password) in &registered {
        let login = api.login(Class::Mobile, email, password).await;
        assert_eq!(
            (login.status, login.side),
            (StatusCode::OK, super::Side::Idbase),
            "{email}: {login:?}"
        );
    }
}
