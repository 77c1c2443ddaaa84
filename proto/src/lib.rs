//! The lth wire protocol (`lth.v1`), generated from `proto/lth/v1/lth.proto`.
//!
//! Kept in its own crate (as Ballista does) so that lthctl, the coordinator and the worker agree on
//! one definition and none of them has to link the others.
//!
//! # Layout
//! - `lth/v1/lth.proto`: the protocol (SweepService for people, WorkerService for daemons);
//!   `build.rs` compiles it with a vendored protoc.
//! - [`v1`]: the generated messages, clients and servers, and the descriptor set for reflection.
//! - [`errors`]: the machine-readable cause of a refused call (`ErrorReason` in an ErrorInfo),
//!   built by servers and read by clients.
//! - [`client`]: channels as lthctl and the daemon open them (TLS by scheme, bearer token,
//!   plaintext/TLS mismatch hints).

pub mod client;

pub mod v1 {
    tonic::include_proto!("lth.v1");

    /// Encoded file descriptor set, for gRPC server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("lth_v1_descriptor");
}

/// Machine-readable causes of refused calls: a `google.rpc.ErrorInfo` in the status details whose
/// `reason` is an [`v1::ErrorReason`] name. Servers build statuses with [`error_status`]; clients
/// read the cause with [`error_reason`] and never match on message text.
pub mod errors {
    use super::v1::ErrorReason;
    use tonic::{Code, Status};
    use tonic_types::{ErrorDetails, StatusExt};

    /// The ErrorInfo domain of lth's reasons.
    pub const DOMAIN: &str = "lth.dev";

    /// A status with `code`, a message for people and `reason` for programs.
    pub fn error_status(code: Code, reason: ErrorReason, message: impl Into<String>) -> Status {
        let details = ErrorDetails::with_error_info(reason.as_str_name(), DOMAIN, std::collections::HashMap::<String, String>::new());
        Status::with_error_details(code, message, details)
    }

    /// [`error_status`] with ErrorInfo metadata (e.g. the roles an auth refusal needs).
    pub fn error_status_with(code: Code, reason: ErrorReason, message: impl Into<String>, metadata: &[(&str, &str)]) -> Status {
        let map: std::collections::HashMap<String, String> = metadata.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Status::with_error_details(code, message, ErrorDetails::with_error_info(reason.as_str_name(), DOMAIN, map))
    }

    /// The ErrorInfo metadata value `key` of one of lth's statuses.
    pub fn error_metadata(status: &Status, key: &str) -> Option<String> {
        let info = status.get_details_error_info()?;
        (info.domain == DOMAIN).then(|| info.metadata.get(key).cloned()).flatten()
    }

    /// What a person should do about an auth refusal, naming the roles the call needs (from the
    /// status's reason and metadata, not its message). None for other statuses.
    pub fn auth_advice(status: &Status) -> Option<String> {
        let reason = error_reason(status)?;
        let roles = match error_metadata(status, "needed_roles") {
            Some(r) => {
                let r: Vec<&str> = r.split(',').collect();
                match r.split_last() {
                    Some((last, rest)) if !rest.is_empty() => format!("{} or {last}", rest.join(", ")),
                    _ => r.join(""),
                }
            }
            None => "?".into(),
        };
        let method = error_metadata(status, "method").unwrap_or_else(|| "this call".into());
        Some(match reason {
            ErrorReason::MissingToken => format!("{method} needs a token with role {roles}; none was sent: set LTH_TOKEN or LTH_TOKEN_FILE"),
            ErrorReason::UnknownToken => {
                format!("{method} needs a token with role {roles}; the coordinator does not know the token sent (revoked, mistyped, or another coordinator's)")
            }
            ErrorReason::RoleRefused => {
                let has = error_metadata(status, "role").unwrap_or_else(|| "?".into());
                let name = error_metadata(status, "token").map(|n| format!(" {n:?}")).unwrap_or_default();
                format!("{method} needs role {roles}; the token{name} has role {has}: ask the coordinator's admin for a token with role {roles}")
            }
            ErrorReason::NotOwner => {
                let owner = error_metadata(status, "owner").unwrap_or_else(|| "someone else".into());
                format!("the sweep belongs to {owner:?}: only its owner or a token with role {roles} may change it")
            }
            ErrorReason::ClientCertRequired => {
                format!("{method} needs a client certificate (mutual TLS): set LTH_TLS_CLIENT_CERT and LTH_TLS_CLIENT_KEY, and a token with role {roles}")
            }
            _ => return None,
        })
    }

    /// INVALID_ARGUMENT with reason INVALID_ARGUMENT.
    pub fn invalid_argument(message: impl Into<String>) -> Status {
        error_status(Code::InvalidArgument, ErrorReason::InvalidArgument, message)
    }

    /// NOT_FOUND with reason NOT_FOUND.
    pub fn not_found(message: impl Into<String>) -> Status {
        error_status(Code::NotFound, ErrorReason::NotFound, message)
    }

    /// UNAVAILABLE with reason STORE_UNAVAILABLE (the database or the object store): retry later.
    pub fn unavailable(message: impl Into<String>) -> Status {
        error_status(Code::Unavailable, ErrorReason::StoreUnavailable, message)
    }

    /// The reason a status carries, if it is one of lth's (None for statuses from elsewhere: a
    /// proxy, the transport, an older coordinator).
    pub fn error_reason(status: &Status) -> Option<ErrorReason> {
        let info = status.get_details_error_info()?;
        if info.domain != DOMAIN {
            return None;
        }
        ErrorReason::from_str_name(&info.reason)
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn the_reason_survives_the_wire_encoding() {
            let s = error_status(Code::FailedPrecondition, ErrorReason::UnknownWorker, "worker \"w\" is not registered");
            // What a client sees: the status rebuilt from its header bytes.
            let back = Status::with_details(s.code(), s.message().to_string(), s.details().to_vec().into());
            assert_eq!(error_reason(&back), Some(ErrorReason::UnknownWorker));
            assert_eq!(error_reason(&Status::failed_precondition("no details")), None);
            let foreign = Status::with_error_details(Code::NotFound, "x", ErrorDetails::with_error_info("UNKNOWN_WORKER", "example.com", std::collections::HashMap::<String, String>::new()));
            assert_eq!(error_reason(&foreign), None, "another domain's reason is not ours");
        }

        #[test]
        fn auth_refusals_carry_their_roles() {
            let s = error_status_with(
                Code::PermissionDenied,
                ErrorReason::RoleRefused,
                "text for people",
                &[("needed_roles", "worker,admin"), ("role", "viewer"), ("token", "ci"), ("method", "/lth.v1.WorkerService/ClaimJobs")],
            );
            let back = Status::with_details(s.code(), s.message().to_string(), s.details().to_vec().into());
            assert_eq!(error_reason(&back), Some(ErrorReason::RoleRefused));
            assert_eq!(error_metadata(&back, "needed_roles").as_deref(), Some("worker,admin"));
            let advice = auth_advice(&back).unwrap();
            assert!(advice.contains("needs role worker or admin") && advice.contains("has role viewer") && advice.contains("\"ci\""), "{advice}");
            assert_eq!(auth_advice(&error_status(Code::NotFound, ErrorReason::NotFound, "x")), None);
        }
    }
}
