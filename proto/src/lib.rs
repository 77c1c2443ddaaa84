//! The lth wire protocol (`lth.v1`), generated from `proto/lth/v1/lth.proto`.
//!
//! Kept in its own crate (as Ballista does) so that lthctl, the coordinator and the worker agree on
//! one definition and none of them has to link the others.

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
    }
}
