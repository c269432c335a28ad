import LengthEchoCore
import Logging
import NIOCore

/// Whether a connection is served, decided once the client's address is known (after PROXY, when there is one):
/// the address policy, the limit per address, the rate of TLS handshakes per address, then the server's
/// connection cap. Shared by every event loop.
///
/// An admitted connection holds an `AdmissionTicket` for what it counts against (its slot under the cap, its
/// address's count), released once, when its channel closes. A refused one holds nothing.
final class Admission: Sendable {
    /// What a refused connection is told (the loop holds the bytes of each refusal).
    enum Reply: Equatable {
        /// Closed without a word.
        case none
        /// The connection cap's busy line.
        case busy
        /// The per-address limit's busy line.
        case perAddressBusy
    }

    /// A line for the operator beside the connection line: the server is refusing many.
    struct Note {
        var level: Logger.Level
        var message: String
    }

    enum Decision {
        case admitted(AdmissionTicket)
        /// `note`: a line for the operator about the refusal, when one is due.
        case refused(ConnectionEnd, detail: String?, reply: Reply, note: Note?)
    }

    let limits: AddressLimits
    let tracker: ConnectionTracker
    /// Whether connections do TLS handshakes (then the handshake rate applies).
    let tls: Bool

    init(limits: AddressLimits, tracker: ConnectionTracker, tls: Bool) {
        self.limits = limits
        self.tracker = tracker
        self.tls = tls
    }

    /// Admits `address` or says why not; `policy` is the address policy as configured now.
    func admit(_ address: SocketAddress?, policy: AddressPolicy?) -> Decision {
        if let policy, let why = policy.refusal(for: address) {
            return .refused(.denied, detail: why, reply: .none, note: nil)
        }
        let address = AddressKey(address)
        // The address's count, when one was taken (there is a per-address limit): released with the ticket.
        var counted: AddressKey?
        if let key = address {
            switch self.limits.admit(key) {
            case .refused: return .refused(.perAddressLimit, detail: nil, reply: .perAddressBusy, note: nil)
            case .counted: counted = key
            case .unlimited: break
            }
            if self.tls {
                let (allowed, log) = self.limits.takeHandshake(key)
                guard allowed else {
                    if let counted { self.limits.release(counted) }
                    // At most once a second for an address.
                    let note =
                        log
                        ? Note(
                            level: .notice,
                            message:
                                "refusing TLS handshakes from this address: more than \(self.limits.handshakesPerSecond ?? 0) a second"
                        ) : nil
                    return .refused(.handshakeRate, detail: nil, reply: .none, note: note)
                }
            }
        }
        guard self.tracker.admit() else {
            if let counted { self.limits.release(counted) }
            return .refused(
                .busy, detail: nil, reply: .busy,
                note: Note(
                    level: .warning,
                    message: "refusing a connection: \(self.tracker.limit) connections are open, the limit"))
        }
        return .admitted(AdmissionTicket(admission: self, key: counted))
    }
}

/// What one admitted connection counts against: its slot under the connection cap and its address's count.
/// Released once, by `ServerLoopState.connectionClosed`, the one place a connection's end is accounted for.
struct AdmissionTicket {
    private let admission: Admission
    private let key: AddressKey?

    fileprivate init(admission: Admission, key: AddressKey?) {
        self.admission = admission
        self.key = key
    }

    func release() {
        self.admission.tracker.release()
        if let key = self.key { self.admission.limits.release(key) }
    }
}
