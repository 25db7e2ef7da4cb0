//! `duffy stats` against a real database: the per-pool numbers of upstream's monitoring scripts
//! (compat spec §11.4) in their formats, and the scripts' own SQL still valid on duffy's schema
//! giving the same numbers.

mod common;

use common::*;

/// Nodes in several pools and states, retired and pool-less ones included.
fn seeded() -> (TestDb, TestConfig) {
    let db = TestDb::migrated();
    db.exec(
        "INSERT INTO nodes (hostname, ipaddr, state, pool, reusable, retired_at) VALUES
         ('a1', '10.0.0.1', 'ready', 'virt-ec2-t2-centos-9s-x86_64', false, NULL),
         ('a2', '10.0.0.2', 'ready', 'virt-ec2-t2-centos-9s-x86_64', false, NULL),
         ('a3', '10.0.0.3', 'deployed', 'virt-ec2-t2-centos-9s-x86_64', false, NULL),
         ('a4', NULL, 'provisioning', 'virt-ec2-t2-centos-9s-x86_64', false, NULL),
         ('a5', '10.0.0.5', 'done', 'virt-ec2-t2-centos-9s-x86_64', false, now()),
         ('b1', '10.0.1.1', 'ready', 'metal-ec2-c5n-centos-10s-x86_64', false, NULL),
         ('b2', '10.0.1.2', 'failed', 'metal-ec2-c5n-centos-10s-x86_64', false, NULL),
         ('c1', '10.0.2.1', 'ready', 'metal-seamicro-large-centos-9s-x86_64', true, NULL),
         ('z1', '10.0.3.1', 'unused', NULL, true, NULL)",
    );
    let cfg = TestConfig::new(&db.url, "");
    (db, cfg)
}

#[test]
fn stats_in_upstreams_formats() {
    let (db, cfg) = seeded();
    let text = ok(&duffy(Some(&cfg.path), &["stats"]));
    assert_eq!(
        text,
        "[+] Duffy Pool status : Ready | Deployed | Provisioning : \n\
         [metal-ec2-c5n-centos-10s-x86_64]: 1 | 0 | 0\n\
         [metal-seamicro-large-centos-9s-x86_64]: 1 | 0 | 0\n\
         [virt-ec2-t2-centos-9s-x86_64]: 2 | 1 | 1\n"
    );
    // the numbers upstream's scripts compute with their own SQL, on this schema
    for (pool, state, want) in [
        ("virt-ec2-t2-centos-9s-x86_64", "ready", "2"),
        ("virt-ec2-t2-centos-9s-x86_64", "deployed", "1"),
        ("virt-ec2-t2-centos-9s-x86_64", "provisioning", "1"),
        ("metal-ec2-c5n-centos-10s-x86_64", "ready", "1"),
    ] {
        assert_eq!(
            db.one(&format!(
                "select count(*) from nodes where pool='{pool}' and state='{state}' ;"
            )),
            want
        );
    }
    assert_eq!(
        db.rows("select distinct pool from nodes order by pool ;")
            .into_iter()
            .filter(|p| p != "NULL")
            .count(),
        3
    );

    let zabbix = ok(&duffy(
        Some(&cfg.path),
        &["stats", "--format", "zabbix", "--exclude", "seamicro"],
    ));
    assert_eq!(
        zabbix,
        "- duffy.nodes.ready.[metal-ec2-c5n-centos-10s-x86_64] 1\n\
         - duffy.nodes.deployed.[metal-ec2-c5n-centos-10s-x86_64] 0\n\
         - duffy.nodes.provisioning.[metal-ec2-c5n-centos-10s-x86_64] 0\n\
         - duffy.nodes.ready.[virt-ec2-t2-centos-9s-x86_64] 2\n\
         - duffy.nodes.deployed.[virt-ec2-t2-centos-9s-x86_64] 1\n\
         - duffy.nodes.provisioning.[virt-ec2-t2-centos-9s-x86_64] 1\n"
    );
    let lld = ok(&duffy(
        Some(&cfg.path),
        &["stats", "--format", "zabbix-lld", "--exclude", "seamicro"],
    ));
    assert_eq!(
        lld,
        "- duffy.lld.pools { \"data\": [ {\"{#DUFFY_POOL_NAME}\": \"metal-ec2-c5n-centos-10s-x86_64\"}, \
         {\"{#DUFFY_POOL_NAME}\": \"virt-ec2-t2-centos-9s-x86_64\"} ] }\n"
    );
    let json: serde_json::Value =
        serde_json::from_str(&ok(&duffy(Some(&cfg.path), &["stats", "--format", "json"]))).unwrap();
    assert_eq!(
        json["pools"][2],
        serde_json::json!({"name": "virt-ec2-t2-centos-9s-x86_64", "ready": 2, "deployed": 1, "provisioning": 1})
    );

    // bad input: one line naming the option, exit 2
    let o = duffy(Some(&cfg.path), &["stats", "--exclude", "(unclosed"]);
    assert_eq!(o.status.code(), Some(2));
    let err = stderr(&o);
    assert!(
        err.contains("--exclude") && err.trim().lines().count() == 1,
        "{err}"
    );
}
