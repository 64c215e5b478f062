--- deepseek-lsp for Neovim: registers the server, shows its suggestions as ghost text (0.12's
--- inline completion) or as completion items (0.10/0.11), and streams explanations into a float.
---
---   require("deepseek").setup({ settings = { model = "~/models/DeepSeek-Coder-V2-Lite-Base" } })

local M = {}

--- The server's name in vim.lsp.config and in `:checkhealth`.
M.name = "deepseek"

local defaults = {
  --- The server command; the binary on PATH by default.
  cmd = { "deepseek-lsp", "serve" },
  filetypes = {
    "python", "rust", "javascript", "javascriptreact", "typescript", "typescriptreact",
    "go", "java", "c", "cpp", "lua", "sh",
  },
  root_markers = { ".git" },
  --- Server settings (README: model, maxTokens, contextBudget, singleLine...), sent as
  --- initializationOptions and as the `deepseek` section of workspace/configuration.
  settings = {},
  --- Ghost text when Neovim has vim.lsp.inline_completion (0.12+); false forces completion items.
  inline_completion = true,
  --- Insert-mode key that accepts the ghost text; falls through when there is none. false: no map.
  accept_key = "<Tab>",
}

M.config = vim.deepcopy(defaults)
--- Whether suggestions are on (`:DeepseekToggle`).
M.enabled = true

local function expand_paths(settings)
  local out = vim.deepcopy(settings)
  for _, key in ipairs({ "model", "chatModel", "logFile" }) do
    if type(out[key]) == "string" then
      out[key] = vim.fn.expand(out[key])
    end
  end
  return out
end

--- Whether this Neovim shows inline completions (0.12+) and the user wants them.
function M.uses_inline_completion()
  return M.config.inline_completion and vim.lsp.inline_completion ~= nil
end

--- The deepseek client attached to `bufnr` (current buffer by default), if any.
function M.client(bufnr)
  return vim.lsp.get_clients({ bufnr = bufnr or 0, name = M.name })[1]
end

local function enable_suggestions(client, bufnr, on)
  if M.uses_inline_completion() then
    vim.lsp.inline_completion.enable(on, { bufnr = bufnr })
  elseif vim.lsp.completion and vim.lsp.completion.enable then
    -- 0.11: completion items, asked for as you type.
    vim.lsp.completion.enable(on, client.id, bufnr, { autotrigger = true })
  else
    -- 0.10: completion items through the omnifunc (<C-x><C-o>).
    vim.bo[bufnr].omnifunc = on and "v:lua.vim.lsp.omnifunc" or ""
  end
end

--- Neovim's LSP completion inserts a plain-text item only up to its first space: after one of
--- ours, put in the rest of the suggestion.
local function insert_whole_suggestion(client_id)
  local completed = vim.v.completed_item
  local lsp = vim.tbl_get(completed or {}, "user_data", "nvim", "lsp") or {}
  local item = lsp.completion_item
  if lsp.client_id ~= client_id or not item or not item.textEdit or item.insertTextFormat == 2 then
    return
  end
  local whole, word = item.textEdit.newText, completed.word
  if #whole <= #word or whole:sub(1, #word) ~= word then
    return
  end
  local lines = vim.split(whole:sub(#word + 1), "\n", { plain = true })
  local row, col = unpack(vim.api.nvim_win_get_cursor(0))
  vim.api.nvim_buf_set_text(0, row - 1, col, row - 1, col, lines)
  local last = #lines == 1 and col + #lines[1] or #lines[#lines]
  vim.api.nvim_win_set_cursor(0, { row + #lines - 1, last })
end

local function on_attach(client, bufnr)
  enable_suggestions(client, bufnr, M.enabled)
  if not M.uses_inline_completion() then
    vim.api.nvim_create_autocmd("CompleteDone", {
      buffer = bufnr,
      callback = function()
        insert_whole_suggestion(client.id)
      end,
    })
  end
  if M.uses_inline_completion() and M.config.accept_key then
    vim.keymap.set("i", M.config.accept_key, function()
      if not vim.lsp.inline_completion.get({ bufnr = bufnr }) then
        return M.config.accept_key
      end
    end, { buffer = bufnr, expr = true, replace_keycodes = true, desc = "Accept the deepseek suggestion" })
  end
end

--- Turns suggestions on or off in every attached buffer.
function M.toggle()
  M.enabled = not M.enabled
  for _, client in ipairs(vim.lsp.get_clients({ name = M.name })) do
    for bufnr in pairs(client.attached_buffers) do
      enable_suggestions(client, bufnr, M.enabled)
    end
  end
  vim.notify("deepseek suggestions " .. (M.enabled and "on" or "off"))
end

--- A scratch float for streamed markdown; returns its buffer.
local function open_float(title)
  local buf = vim.api.nvim_create_buf(false, true)
  vim.bo[buf].filetype = "markdown"
  local width = math.min(90, math.floor(vim.o.columns * 0.8))
  local height = math.min(25, math.floor(vim.o.lines * 0.6))
  vim.api.nvim_open_win(buf, false, {
    relative = "editor", style = "minimal", border = "rounded", title = title,
    width = width, height = height,
    row = math.floor((vim.o.lines - height) / 2), col = math.floor((vim.o.columns - width) / 2),
  })
  vim.keymap.set("n", "q", "<cmd>close<cr>", { buffer = buf })
  return buf
end

local function set_text(buf, text)
  if vim.api.nvim_buf_is_valid(buf) then
    vim.api.nvim_buf_set_lines(buf, 0, -1, false, vim.split(text, "\n", { plain = true }))
  end
end

local explain_count = 0

--- Explains lines `first`..`last` (1-based) of the current buffer in a float that fills as the
--- server streams; `on_done(markdown)` is called with the whole answer.
function M.explain(first, last, on_done)
  local bufnr = vim.api.nvim_get_current_buf()
  local client = M.client(bufnr)
  if not client then
    vim.notify("deepseek-lsp is not attached to this buffer", vim.log.levels.WARN)
    return
  end
  explain_count = explain_count + 1
  local token = "deepseek-explain-" .. explain_count
  local float = open_float(" deepseek: explain ")
  local streamed = ""
  set_text(float, "…")
  local progress = vim.api.nvim_create_autocmd("LspProgress", {
    pattern = "report",
    callback = function(event)
      local params = event.data.params
      if event.data.client_id == client.id and params.token == token and params.value.message then
        streamed = streamed .. params.value.message
        set_text(float, streamed)
      end
    end,
  })
  local last_line = vim.api.nvim_buf_get_lines(bufnr, last - 1, last, false)[1] or ""
  local params = {
    textDocument = vim.lsp.util.make_text_document_params(bufnr),
    range = { start = { line = first - 1, character = 0 }, ["end"] = { line = last - 1, character = #last_line } },
    workDoneToken = token,
  }
  client:request("deepseek/explain", params, function(err, result)
    vim.api.nvim_del_autocmd(progress)
    local text = err and ("deepseek-lsp: " .. err.message) or (result and result.markdown or "")
    set_text(float, text)
    if on_done then
      on_done(text)
    end
  end, bufnr)
end

function M.setup(opts)
  M.config = vim.tbl_deep_extend("force", vim.deepcopy(defaults), opts or {})
  local settings = expand_paths(M.config.settings)
  local server = {
    cmd = M.config.cmd,
    filetypes = M.config.filetypes,
    root_markers = M.config.root_markers,
    init_options = settings,
    settings = { deepseek = settings },
    on_attach = on_attach,
  }
  if vim.lsp.config and vim.lsp.enable then
    vim.lsp.config(M.name, server)
    vim.lsp.enable(M.name)
  else
    -- 0.10: start the server per buffer of a listed filetype.
    vim.api.nvim_create_autocmd("FileType", {
      pattern = M.config.filetypes,
      callback = function(event)
        local root = vim.fs.root(event.buf, M.config.root_markers)
        vim.lsp.start(vim.tbl_extend("force", server, { name = M.name, root_dir = root }), { bufnr = event.buf })
      end,
    })
  end
  vim.api.nvim_create_user_command("DeepseekExplain", function(command)
    M.explain(command.line1, command.line2)
  end, { range = true, desc = "Explain the selected lines with deepseek-lsp" })
  vim.api.nvim_create_user_command("DeepseekToggle", M.toggle, { desc = "Turn deepseek suggestions on or off" })
end

return M
