// Parses AsyncAPI documents with the official parser (@asyncapi/parser) and prints one
// JSON line per diagnostic, then one summary line per file:
//   {"file", "errors", "channels", "operations", "messages"}
// Exits 1 when any file has an error (severity 0) or yields no document.
// Usage: NODE_PATH=<node_modules with @asyncapi/parser> node asyncapi_parse.cjs FILE...
const { Parser, fromFile } = require('@asyncapi/parser');

(async () => {
  const parser = new Parser();
  let failed = false;
  for (const file of process.argv.slice(2)) {
    const { document, diagnostics } = await fromFile(parser, file).parse();
    let errors = 0;
    for (const d of diagnostics) {
      if (d.severity === 0) errors++;
      console.log(JSON.stringify({ file, severity: d.severity, code: d.code, path: d.path.join('/'), message: d.message }));
    }
    const summary = { file, errors, document: !!document };
    if (document) {
      summary.channels = document.channels().length;
      summary.operations = document.operations().length;
      summary.messages = document.messages().length;
    }
    if (errors || !document) failed = true;
    console.log(JSON.stringify(summary));
  }
  process.exit(failed ? 1 : 0);
})().catch((e) => { console.error(e); process.exit(2); });
