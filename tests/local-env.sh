# Sourced by tests/serve and tests/dev-token: exports each Values entry of
# local.settings.json (or local.settings.sample.json) that the environment does not set.
settings="$root/local.settings.json"
[ -f "$settings" ] || settings="$root/local.settings.sample.json"
exports="$(node -e '
  const values = require(process.argv[1]).Values || {};
  const quote = (s) => "'"'"'" + String(s).replace(/'"'"'/g, "'"'"'\\'"'"''"'"'") + "'"'"'";
  for (const [k, v] of Object.entries(values)) {
    if (!/^[A-Za-z_][A-Za-z0-9_]*$/.test(k) || process.env[k] !== undefined || v === "") continue;
    console.log(`export ${k}=${quote(v)}`);
  }' "$settings")" || { echo "cannot read $settings (is it valid JSON?)" >&2; exit 1; }
eval "$exports"
