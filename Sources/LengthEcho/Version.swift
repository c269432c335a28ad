/// This release of the package: the one place its version is written in code. `server`, `client` and `bench`
/// print it for `--version`; CHANGELOG.md's top entry names the same (a test checks both).
///
/// (Not `LengthEchoVersion`: the Swift symbol graph leaves out any type whose name starts with its module's name
/// and `Version`, so it would have no page in the documentation.)
public enum LengthEchoRelease {
    /// The version, `MAJOR.MINOR.PATCH`.
    public static let version = "1.0.0"
}
