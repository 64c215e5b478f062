# Sourced by the tools/*_check.sh scripts: `cargo ... --no-run --message-format=json |
# executable_of` prints the paths of the executables cargo built.
executable_of() {
    python3 -c '
import json, sys
for line in sys.stdin:
    message = json.loads(line)
    if message.get("reason") == "compiler-artifact" and message.get("executable"):
        print(message["executable"])'
}
