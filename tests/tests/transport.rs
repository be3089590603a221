//! End to end over HTTPS: a real `keepsake-server` serving a certificate the test made, an agent
//! that trusts it with `--ca-cert`, enrols, backs up and restores; plain `http://` to another
//! machine is refused before anything is sent.

use keepsake_e2e::*;

#[test]
fn an_agent_enrols_backs_up_and_restores_over_https_with_a_trusted_ca() {
    let (w, ca) = World::https();
    assert!(w.server.url.starts_with("https://"), "{}", w.server.url);
    let org = w.create_org("Secure Studio");
    let token = org["enroll_token"].as_str().unwrap();
    let ca = ca.to_str().unwrap();

    // Without the CA the certificate is not trusted: enrolment fails and the token is unspent.
    let untrusting = AgentHome::new(&w.root.join("home-untrusting"));
    let out = untrusting.run(&[
        "enroll",
        "--server",
        &w.server.url,
        "--token",
        token,
        "--name",
        "x",
    ]);
    assert!(!out.status.success());
    assert!(!untrusting.home.join("agent.toml").exists());

    // Plain http:// to another machine is refused before the token is sent.
    let out = untrusting.run(&[
        "enroll",
        "--server",
        "http://192.0.2.1:8420",
        "--token",
        token,
        "--name",
        "x",
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("refusing plain http://") && err.contains("--insecure-http"),
        "{err}"
    );

    let a = AgentHome::new(&w.root.join("home-laptop"));
    a.json(&[
        "enroll",
        "--server",
        &w.server.url,
        "--token",
        token,
        "--name",
        "laptop",
        "--ca-cert",
        ca,
    ]);
    let config = std::fs::read_to_string(a.home.join("agent.toml")).unwrap();
    assert!(
        config.contains("ca_cert") && config.contains("https://"),
        "{config}"
    );

    let shoot = w.dir("shoot");
    write_shoot(&shoot, 7, 3, 200_000);
    let summary = a.backup(&shoot);
    assert_eq!(summary["committed"]["seq"], 1, "{summary}");
    let point = point_of(&summary);
    let out = w.dir("restored");
    let r = a.restore(&point, &out, &[]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    assert_eq!(tree_hashes(&shoot), tree_hashes(&out));
}
