--- `:checkhealth deepseek`: the binary, the Neovim features the plugin uses, the model.

local M = {}

function M.check()
  local deepseek = require("deepseek")
  local health = vim.health
  health.start("deepseek-lsp")

  local version = vim.version()
  local nvim = string.format("%d.%d.%d", version.major, version.minor, version.patch)
  if vim.lsp.inline_completion then
    health.ok("Neovim " .. nvim .. ": ghost text through vim.lsp.inline_completion")
  elseif vim.fn.has("nvim-0.10") == 1 then
    health.warn("Neovim " .. nvim .. ": no inline completion before 0.12; suggestions come as completion items")
  else
    health.error("Neovim " .. nvim .. " is too old: 0.10 or later is needed")
  end

  local binary = deepseek.config.cmd[1]
  local path = vim.fn.exepath(binary)
  if path == "" then
    health.error("`" .. binary .. "` not found", {
      "Install it: cargo install --path . (in the deepseek-lsp repository)",
      "Or give its full path: require('deepseek').setup({ cmd = { '/path/to/deepseek-lsp', 'serve' } })",
    })
  else
    local out = vim.system({ path, "--version" }, { text = true }):wait(5000)
    health.ok(path .. " (" .. vim.trim(out.stdout or "version unknown") .. ")")
  end

  -- :checkhealth shows its report in a buffer of its own: any running deepseek client will do.
  local client = vim.lsp.get_clients({ name = deepseek.name })[1]
  if not client then
    health.info("deepseek-lsp is not running (open a file of a configured filetype)")
    return
  end
  local reply = client:request_sync("deepseek/status", vim.NIL, 2000, 0)
  local status = reply and reply.result
  if not status then
    health.warn("the server did not answer deepseek/status")
  elseif status.model == "ready" then
    local summary = type(status.modelSummary) == "string" and (" (" .. status.modelSummary .. ")") or ""
    health.ok("model ready" .. summary .. (status.indexedFiles and (", " .. status.indexedFiles .. " files indexed") or ""))
  elseif status.model == "failed" then
    health.error("the model failed to load: " .. tostring(status.modelError))
  else
    health.info("model: " .. tostring(status.model))
  end
  health.info("suggestions " .. (deepseek.enabled and "on" or "off (:DeepseekToggle)"))
end

return M
