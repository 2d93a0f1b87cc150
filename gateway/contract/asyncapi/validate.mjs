// Validates an AsyncAPI document with the AsyncAPI parser (its JSON schema for the spec version
// and the bindings, plus the parser's own rules). Prints every diagnostic; exits 1 on an error or
// a warning (information and hints, such as "a newer spec version exists", pass).
import { Parser, DiagnosticSeverity } from "@asyncapi/parser";
import { readFileSync } from "node:fs";

const file = process.argv[2];
if (!file) {
  console.error("usage: node validate.mjs <asyncapi.json>");
  process.exit(2);
}
const diagnostics = await new Parser().validate(readFileSync(file, "utf8"));
let failed = false;
for (const d of diagnostics) {
  const severe = d.severity === DiagnosticSeverity.Error || d.severity === DiagnosticSeverity.Warning;
  failed ||= severe;
  const level = ["error", "warning", "information", "hint"][d.severity] ?? String(d.severity);
  console.log(`${level}: ${d.code}: ${d.message} at ${JSON.stringify(d.path)}`);
}
console.log(failed ? "invalid" : "valid");
process.exit(failed ? 1 : 0);
