// Parses an AsyncAPI document with the official parser and prints every diagnostic as
// one JSON line; exits 1 when there is an error (severity 0) or no document.
// Usage: NODE_PATH=<node_modules with @asyncapi/parser> node asyncapi_parse.cjs FILE
const { Parser, fromFile } = require('@asyncapi/parser');

(async () => {
  const parser = new Parser();
  const { document, diagnostics } = await fromFile(parser, process.argv[2]).parse();
  let errors = 0;
  for (const d of diagnostics) {
    if (d.severity === 0) errors++;
    console.log(JSON.stringify({ severity: d.severity, code: d.code, path: d.path.join('/'), message: d.message }));
  }
  if (!document) {
    console.log(JSON.stringify({ severity: 0, message: 'no document' }));
    errors++;
  } else {
    console.log(JSON.stringify({
      channels: document.channels().length,
      operations: document.operations().length,
      messages: document.messages().length,
    }));
  }
  process.exit(errors ? 1 : 0);
})().catch((e) => { console.error(e); process.exit(2); });
