// Usage: node validate.js FILE.rdjsonl
// Checks every non-empty line as one reviewdog Diagnostic (strict: unknown fields are errors)
// and exits 1, printing each error, when any line is not valid.
const fs = require("node:fs");
const { validate, formatValidationErrors } = require("@umbrelladocs/rdformat-validator");

async function main() {
  const lines = fs.readFileSync(process.argv[2], "utf8").split("\n").filter((l) => l.trim());
  let invalid = 0;
  for (const [index, line] of lines.entries()) {
    const result = await validate(line, { strictMode: true, allowExtraFields: false });
    if (!result.valid) {
      invalid += 1;
      console.log(`line ${index + 1}: ${formatValidationErrors(result.errors).join("; ")}`);
    }
  }
  console.log(`${lines.length} diagnostic(s), ${invalid} invalid`);
  process.exit(invalid === 0 ? 0 : 1);
}

main().catch((e) => {
  console.error(e);
  process.exit(2);
});
