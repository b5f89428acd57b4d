//! Helpers shared by the privileged lab tests.
