//! `http` checks: a GET with reqwest (no redirects followed, no proxy from the environment);
//! up when the status is the expected one, or any 2xx.

use std::time::Duration;

use super::{CheckError, HttpCheck};

/// GETs the check's URL; the body is not read.
pub(super) async fn get(check: &HttpCheck, timeout: Duration) -> Result<(), CheckError> {
    let client = reqwest::Client::builder()
        .timeout(timeout)
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("wgtel/", env!("CARGO_PKG_VERSION"), " check"))
        .build()
        .map_err(CheckError::Http)?;
    let response = client.get(check.url.clone()).send().await.map_err(CheckError::Http)?;
    let status = response.status().as_u16();
    let up = match check.expect_status {
        Some(expected) => status == expected,
        None => response.status().is_success(),
    };
    if up {
        Ok(())
    } else {
        let expected = check.expect_status.map_or_else(|| "2xx".to_owned(), |s| s.to_string());
        Err(CheckError::HttpStatus { got: status, expected })
    }
}
