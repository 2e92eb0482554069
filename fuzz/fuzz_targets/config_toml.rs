//! `stepbox.toml`: any text gives a valid configuration or a one-line error.
#![no_main]

use libfuzzer_sys::fuzz_target;
use stepbox::config::{ConfigError, HostConfig};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match HostConfig::from_toml(text) {
        Ok(config) => {
            config
                .scheduler
                .quotas
                .validate()
                .expect("accepted quotas are valid");
            config
                .scheduler
                .breaker
                .validate()
                .expect("an accepted breaker is valid");
        }
        Err(ConfigError::Invalid { path, message }) => {
            assert!(path.is_none());
            stepbox_fuzz::assert_one_line(&message);
        }
        Err(other) => panic!("text cannot fail to be read: {other}"),
    }
});
