/// The package's version: the one place it is written in code. `server`, `client` and `bench` print it for
/// `--version`; CHANGELOG.md's top entry names the same (a test checks both).
public enum LengthEchoVersion {
    /// `MAJOR.MINOR.PATCH`.
    public static let current = "1.0.0"
}
