# copymachine's set-up on Windows in one command, what `make setup` does elsewhere: .venv with copymachine,
# then `copymachine setup` (the pinned sd-scripts, its own venv, torch, its requirements, then doctor).
# Never run on Windows yet (see docs/install.md, "On Windows: what has run there").
#
#   powershell -ExecutionPolicy Bypass -File setup.ps1 -Torch "torch torchvision --index-url https://download.pytorch.org/whl/cu124"
#   .\setup.ps1 -SdScripts C:\kohya_ss\sd-scripts     # an sd-scripts you have (when git cannot fetch it)
#   .\setup.ps1 -BasePython C:\Python311\python.exe   # the Python that makes both venvs (default: py -3)
param(
    [string]$Torch = "torch torchvision",
    [string]$SdScripts = "",
    [string]$BasePython = ""
)
Set-Location $PSScriptRoot  # the checkout: .venv and vendor\sd-scripts are made here

if (-not (Test-Path .venv\Scripts\python.exe)) {
    if ($BasePython) { & $BasePython -m venv .venv } else { & py -3 -m venv .venv }
    if ($LASTEXITCODE -ne 0) {
        Write-Error "making .venv failed: install Python 3.10 or later (python.org), or give -BasePython C:\path\to\python.exe"
        exit 4
    }
}
& .venv\Scripts\python.exe -m pip install -q --upgrade pip
& .venv\Scripts\python.exe -m pip install -q -e .
if ($LASTEXITCODE -ne 0) { exit $LASTEXITCODE }

$setupArgs = @("setup", "--torch", $Torch)
if ($SdScripts) { $setupArgs += @("--sd-scripts", $SdScripts) }
if ($BasePython) { $setupArgs += @("--base-python", $BasePython) }
& .venv\Scripts\copymachine.exe @setupArgs
exit $LASTEXITCODE
