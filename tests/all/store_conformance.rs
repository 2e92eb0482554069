//! The store conformance suite (`stepbox::store::conformance`) on SQLite:
//! every property as its own test, each on a fresh file.

use stepbox::store::conformance::StoreUnderTest;
use stepbox::store::{Durability, SqliteReader, SqliteStore, StoreReader, StoreWriter};

/// A journal file in a directory of its own.
struct Sqlite {
    dir: tempfile::TempDir,
}

impl Sqlite {
    fn fresh() -> Sqlite {
        Sqlite {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn path(&self) -> std::path::PathBuf {
        self.dir.path().join("journal.db")
    }
}

impl StoreUnderTest for Sqlite {
    fn writer(&self) -> Box<dyn StoreWriter> {
        Box::new(SqliteStore::open(&self.path(), Durability::Strict).unwrap())
    }

    fn reader(&self) -> Box<dyn StoreReader> {
        Box::new(SqliteReader::open(&self.path()).unwrap())
    }

    fn second_writer(&self) -> Option<Box<dyn StoreWriter>> {
        // The lock file allows one writer at a time.
        None
    }
}

stepbox::store_conformance!(Sqlite::fresh);

/// The same suite on PostgreSQL: a database of its own per test, on the
/// server `STEPBOX_TEST_POSTGRES` names (scripts/setup starts one and
/// makes the role of the default URL). Never skipped: without a server
/// these tests fail, saying how to get one.
pub(crate) mod postgres {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use stepbox::store::conformance::StoreUnderTest;
    use stepbox::store::{Durability, PostgresReader, PostgresStore, StoreReader, StoreWriter};

    /// Where the tests' server is: a database they may create others from.
    pub(crate) fn admin_url() -> String {
        std::env::var("STEPBOX_TEST_POSTGRES")
            .unwrap_or_else(|_| "postgres://stepbox:stepbox@127.0.0.1:5432/postgres".to_owned())
    }

    /// A fresh, empty database, dropped with this value.
    pub(crate) struct TestDatabase {
        name: String,
        url: String,
    }

    impl TestDatabase {
        pub(crate) fn new() -> TestDatabase {
            static NEXT: AtomicUsize = AtomicUsize::new(0);
            let name = format!(
                "stepbox_test_{}_{}",
                std::process::id(),
                NEXT.fetch_add(1, Ordering::Relaxed)
            );
            let admin = admin_url();
            let mut client = postgres::Client::connect(&admin, postgres::NoTls).unwrap_or_else(|e| {
                panic!("no PostgreSQL for the tests at {admin} ({e}): run scripts/setup, or set STEPBOX_TEST_POSTGRES")
            });
            // One statement each: DROP and CREATE DATABASE refuse to run in
            // the transaction a multi-statement string makes.
            client
                .batch_execute(&format!("DROP DATABASE IF EXISTS {name}"))
                .unwrap();
            client.batch_execute(&format!("CREATE DATABASE {name}")).unwrap();
            let (base, _) = admin.rsplit_once('/').unwrap();
            TestDatabase {
                url: format!("{base}/{name}"),
                name,
            }
        }

        pub(crate) fn url(&self) -> &str {
            &self.url
        }
    }

    impl Drop for TestDatabase {
        fn drop(&mut self) {
            if let Ok(mut client) = postgres::Client::connect(&admin_url(), postgres::NoTls) {
                let _ = client.batch_execute(&format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name));
            }
        }
    }

    struct Postgres {
        db: TestDatabase,
    }

    impl Postgres {
        fn fresh() -> Postgres {
            Postgres {
                db: TestDatabase::new(),
            }
        }
    }

    impl StoreUnderTest for Postgres {
        fn writer(&self) -> Box<dyn StoreWriter> {
            Box::new(PostgresStore::open(self.db.url(), Durability::Strict).unwrap())
        }

        fn reader(&self) -> Box<dyn StoreReader> {
            Box::new(PostgresReader::open(self.db.url(), 4).unwrap())
        }

        fn second_writer(&self) -> Option<Box<dyn StoreWriter>> {
            Some(Box::new(
                PostgresStore::open(self.db.url(), Durability::Strict).unwrap(),
            ))
        }
    }

    stepbox::store_conformance!(Postgres::fresh);

    /// A heartbeat is one row per host: renewing the lease of a host that
    /// holds 500 runs writes its `hosts` row and not one run's row (a
    /// lease column per run made every renewal rewrite them all).
    #[test]
    fn a_renewal_writes_the_hosts_row_and_no_run_row() {
        use stepbox::store::{Event, WorkflowRecord, now_millis};
        let db = TestDatabase::new();
        let mut writer = PostgresStore::open(db.url(), Durability::Strict).unwrap();
        let workflow = std::sync::Arc::new(WorkflowRecord {
            digest: "wf".into(),
            name: "wf".into(),
            path: "wf.yaml".into(),
            source: "name: wf".into(),
            components: Vec::new(),
        });
        let now = now_millis();
        let mut events = vec![Event::WorkflowDefined(workflow)];
        events.extend((1..=500).map(|run| Event::RunAccepted {
            run,
            workflow: "wf".into(),
            name: "wf".into(),
            lease_until: now + 60_000,
            queued: false,
            input: b"{}".to_vec(),
            at: now,
            tenant: None,
            key: None,
        }));
        writer.write("a", &events).unwrap();
        assert_eq!(writer.renew_leases("a", now + 120_000).unwrap(), 500);
        let mut client = postgres::Client::connect(db.url(), postgres::NoTls).unwrap();
        let row = client
            .query_one(
                "SELECT lease_until, (SELECT count(*) FROM runs WHERE runs.xmin = hosts.xmin)
                 FROM hosts WHERE owner = 'a'",
                &[],
            )
            .unwrap();
        assert_eq!(row.get::<_, i64>(0), now + 120_000, "the heartbeat moved");
        assert_eq!(row.get::<_, i64>(1), 0, "no run row was written by the renewal");
    }
}
