//! Double-write parity: a legacy that acknowledges member writes without
//! double-writing them is caught before reads move to idbase.

use super::{Api, Class, start_with};
use std::time::{Duration, Instant};

#[tokio::test]
async fn a_legacy_that_does_not_double_write_cannot_move_reads_to_idbase() {
    let cutover = start_with(1, &[], false).await;
    let api = Api::new(&cutover.gateways[0].url, &cutover.tokens);
    cutover.move_to(1, 100).await.unwrap();
    cutover.migrate_members().unwrap();
    for i in 0..3 {
        let email = format!("parity-{i}@example.com");
        let registered = api
            .register(Class::Web, &email, "correct horse battery")
            .await;
        assert_eq!(registered.status, 201, "{registered:?}");
    }

    // The gateway reports the three writes legacy acknowledged within its
    // next heartbeat (500 ms); none came back as a double write.
    let expected =
        "0 double writes received < 3 member writes proxied to legacy in the last 10 min";
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let parity = cutover.check(2, 100, "double-write-parity").await.unwrap();
        if parity.figure == expected {
            assert!(!parity.pass);
            break;
        }
        assert!(Instant::now() < deadline, "{parity:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let refused = cutover.set_phase(2, 100).await.unwrap().unwrap_err();
    assert!(
        refused.message().contains("double-write-parity"),
        "{}",
        refused.message()
    );
    assert_eq!(cutover.phase().await.unwrap().phase, 1);
}
