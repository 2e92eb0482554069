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
