//! Binary telemetry frames: a 4-byte ASCII prefix followed by OTLP/JSON (protocol.md §7.1).

/// Which OTLP export a telemetry frame carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TelemetryKind {
    /// `LOGS`: an `ExportLogsServiceRequest`.
    Logs,
    /// `OTLP`: an `ExportTraceServiceRequest` (spans).
    Traces,
    /// `MTRC`: an `ExportMetricsServiceRequest`.
    Metrics,
}

/// Splits a binary frame into its telemetry kind and JSON payload, or `None` when the frame does not
/// start with a known prefix (it may then be binary-framed JSON, which the worker socket also accepts).
pub fn split_telemetry(frame: &[u8]) -> Option<(TelemetryKind, &[u8])> {
    if frame.len() < 4 {
        return None;
    }
    let (prefix, rest) = frame.split_at(4);
    let kind = match prefix {
        b"LOGS" => TelemetryKind::Logs,
        b"OTLP" => TelemetryKind::Traces,
        b"MTRC" => TelemetryKind::Metrics,
        _ => return None,
    };
    Some((kind, rest))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_known_prefixes_only() {
        assert_eq!(
            split_telemetry(b"LOGS{}"),
            Some((TelemetryKind::Logs, &b"{}"[..]))
        );
        assert_eq!(
            split_telemetry(b"OTLP{}"),
            Some((TelemetryKind::Traces, &b"{}"[..]))
        );
        assert_eq!(
            split_telemetry(b"MTRC"),
            Some((TelemetryKind::Metrics, &b""[..]))
        );
        assert_eq!(split_telemetry(b"{\"type\":\"ping\"}"), None);
        assert_eq!(split_telemetry(b"LOG"), None);
    }
}
