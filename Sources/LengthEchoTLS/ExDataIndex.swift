internal import COpenSSL

/// The application-data slots this layer keeps in OpenSSL's objects, each allocated once per process with
/// OpenSSL's own allocator, so that no other user of the library in the process can be handed the same slot.
/// A failed allocation is -1, which every setter then refuses: the failure surfaces where the slot is set.
enum ExDataIndex {
    /// In each `SSL`: its `TLSConnection` (for the verify callback's identity policy).
    static let connection: Int32 = shim_SSL_get_ex_new_index()
    /// In each server `SSL_CTX`: its `TicketKeys` (for the session-ticket callback).
    static let ticketKeys: Int32 = shim_SSL_CTX_get_ex_new_index()
}
