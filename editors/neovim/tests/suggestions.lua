-- Headless check of the plugin with the real server: ghost text appears and Tab accepts it
-- (mode "inline"), a completion item appears and accepting it inserts it (mode "items"),
-- :DeepseekExplain's float shows the streamed answer (mode "explain"), :checkhealth (mode "health").
-- Run by tests/neovim.rs:
--   nvim --headless -u NONE -i NONE --cmd "set rtp^=editors/neovim" -c "luafile editors/neovim/tests/suggestions.lua"
-- with DEEPSEEK_LSP_BIN, DEEPSEEK_TEST_MODEL (optional), DEEPSEEK_TEST_FILE, DEEPSEEK_TEST_LINE (1-based), DEEPSEEK_TEST_MODE and
-- DEEPSEEK_TEST_RESULT (a JSON file this writes: {"ok": ..., "error"?: ..., ...}).

local env = vim.env
local result = { ok = false, mode = env.DEEPSEEK_TEST_MODE }

local function finish()
  local file = assert(io.open(env.DEEPSEEK_TEST_RESULT, "w"))
  file:write(vim.json.encode(result))
  file:close()
  vim.cmd("qa!")
end

--- Yields the test coroutine until `condition()` holds or `timeout` ms pass; returns whether it held.
local function wait_until(condition, timeout)
  local co = coroutine.running()
  local deadline = vim.uv.now() + timeout
  local function poll()
    local ok, held = pcall(condition)
    if ok and held then
      coroutine.resume(co, true)
    elseif vim.uv.now() > deadline then
      coroutine.resume(co, false)
    else
      vim.defer_fn(poll, 50)
    end
  end
  vim.defer_fn(poll, 0)
  return coroutine.yield()
end

local function check(condition, message)
  if not condition then
    error(message, 0)
  end
end

local function feed(keys)
  vim.api.nvim_feedkeys(vim.api.nvim_replace_termcodes(keys, true, false, true), "m", false)
end

local function buffer_text()
  return table.concat(vim.api.nvim_buf_get_lines(0, 0, -1, false), "\n")
end

local function ghost_text(bufnr)
  local namespace = vim.api.nvim_get_namespaces()["nvim.lsp.inline_completion"]
  if not namespace then
    return nil
  end
  local parts = {}
  for _, mark in ipairs(vim.api.nvim_buf_get_extmarks(bufnr, namespace, 0, -1, { details = true })) do
    local details = mark[4]
    for _, chunk in ipairs(details.virt_text or {}) do
      table.insert(parts, chunk[1])
    end
    for _, line in ipairs(details.virt_lines or {}) do
      local text = {}
      for _, chunk in ipairs(line) do
        table.insert(text, chunk[1])
      end
      table.insert(parts, "\n" .. table.concat(text))
    end
  end
  return #parts > 0 and table.concat(parts) or nil
end

local function run()
  local deepseek = require("deepseek")
  vim.cmd("filetype on")
  deepseek.setup({
    cmd = { env.DEEPSEEK_LSP_BIN, "serve" },
    -- No model setting: the server's built-in one (DEEPSEEK_TEST_MODEL names another).
    settings = { maxTokens = 24, debounceMs = 0, model = env.DEEPSEEK_TEST_MODEL },
    inline_completion = result.mode == "inline",
  })
  vim.cmd.edit(env.DEEPSEEK_TEST_FILE)
  local bufnr = vim.api.nvim_get_current_buf()
  check(wait_until(function() return deepseek.client(bufnr) ~= nil end, 15000), "the server did not attach")
  local client = deepseek.client(bufnr)
  check(wait_until(function()
    local reply = client:request_sync("deepseek/status", vim.NIL, 2000, bufnr)
    result.model = reply and reply.result and reply.result.model
    return result.model == "ready"
  end, 60000), "the model did not get ready: " .. tostring(result.model))
  result.inline_api = vim.lsp.inline_completion ~= nil
  result.before = buffer_text()

  if result.mode == "explain" then
    local markdown
    deepseek.explain(1, 2, function(text) markdown = text end)
    check(wait_until(function() return markdown ~= nil end, 60000), "the explanation did not finish")
    result.markdown = markdown
    -- The float shows the whole answer.
    for _, win in ipairs(vim.api.nvim_list_wins()) do
      if vim.api.nvim_win_get_config(win).relative ~= "" then
        result.float = table.concat(vim.api.nvim_buf_get_lines(vim.api.nvim_win_get_buf(win), 0, -1, false), "\n")
      end
    end
    result.ok = true
    return
  end
  if result.mode == "health" then
    vim.cmd("checkhealth deepseek")
    result.health = table.concat(vim.api.nvim_buf_get_lines(0, 0, -1, false), "\n")
    result.ok = true
    return
  end

  -- The end of the test line, in insert mode: where a user who just pressed Enter would be.
  vim.api.nvim_win_set_cursor(0, { tonumber(env.DEEPSEEK_TEST_LINE), 0 })
  feed("A")
  check(wait_until(function() return vim.api.nvim_get_mode().mode == "i" end, 5000), "not in insert mode")

  if result.mode == "inline" then
    check(wait_until(function() return ghost_text(bufnr) ~= nil end, 30000), "no ghost text appeared")
    result.ghost = ghost_text(bufnr)
    feed(deepseek.config.accept_key)
    check(wait_until(function() return buffer_text() ~= result.before end, 5000), "accepting changed nothing")
  else
    vim.lsp.completion.get()
    check(wait_until(function() return #vim.fn.complete_info({ "items" }).items > 0 end, 30000), "no completion item")
    local item = vim.fn.complete_info({ "items" }).items[1]
    result.label = item.abbr ~= "" and item.abbr or item.word
    -- What a UI does when the user picks the first item (a headless Neovim shows no menu for keys).
    vim.api.nvim_select_popupmenu_item(0, true, true, {})
    check(wait_until(function() return buffer_text() ~= result.before end, 5000), "accepting changed nothing")
  end
  feed("<Esc>")
  wait_until(function() return vim.api.nvim_get_mode().mode == "n" end, 2000)
  result.after = buffer_text()
  result.ok = true
end

-- Whatever happens, write the result and quit (a hung test is the worst outcome).
vim.defer_fn(function()
  result.error = "timed out"
  finish()
end, 120000)
coroutine.wrap(function()
  local ok, err = pcall(run)
  if not ok then
    result.ok = false
    result.error = tostring(err)
  end
  finish()
end)()
