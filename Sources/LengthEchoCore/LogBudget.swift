import NIOCore

/// How many lines about its connections one event loop may log per second. A flood of refused or failing
/// connections would otherwise become a flood of log lines; past the budget, lines are counted, and the
/// count is reported once the next second begins. Used on its event loop only.
package final class LogBudget {
    private let perSecond: Int
    private var windowStart = NIODeadline.uptimeNanoseconds(0)
    private var used = 0
    private var heldBack = 0

    package init(perSecond: Int = 20) {
        self.perSecond = perSecond
    }

    /// Whether a line may be logged now. When a new second begins after lines were held back, `report`
    /// is called first with how many.
    package func allow(now: NIODeadline = .now(), report: (Int) -> Void) -> Bool {
        if now >= self.windowStart + .seconds(1) {
            if self.heldBack > 0 { report(self.heldBack) }
            self.windowStart = now
            self.used = 0
            self.heldBack = 0
        }
        guard self.used < self.perSecond else {
            self.heldBack += 1
            return false
        }
        self.used += 1
        return true
    }
}
