# AutoEncoderToolkit.jl side of the aetk_jax benchmark (NOT RUN here: no Julia on the machine
# where it was written; see README.md in this folder).
#
#   python -m benchmarks.julia_export --suite quick            # writes benchmarks/julia/input/
#   julia --project=benchmarks/julia benchmarks/julia/bench.jl \
#         benchmarks/julia/input benchmarks/results/julia-quick-cpu.json
#
# Reads the settings and the exact float32 data the Python suite uses, builds the same MLP
# encoder / Bernoulli decoder (and RHVAE metric chain) with AutoEncoderToolkit.jl's
# constructors, times `train!` steps and whole epochs, and writes JSON with the same record
# layout as benchmarks/results/<suite>-cpu.json ("models": [{model, dataset, setting,
# aetk_jl: {step: {median_ms, p25_ms, p75_ms, min_ms, n}, first_step_s, epoch_s}}]).
# `python -m benchmarks.run` picks the file up when it exists.

using AutoEncoderToolkit
using Flux
using JSON3
using Random
using Statistics
using Dates

const AET = AutoEncoderToolkit

function load_inputs(dir::AbstractString)
    cfg = JSON3.read(read(joinpath(dir, "config.json"), String))
    shapes = JSON3.read(read(joinpath(dir, "shapes.json"), String))
    data = Dict{String,Matrix{Float32}}()
    for (name, shp) in pairs(shapes)
        n, d = Int(shp[1]), Int(shp[2])
        v = Vector{Float32}(undef, n * d)
        read!(joinpath(dir, "$(name).f32"), v)
        # NumPy wrote (n, d) row-major; column-major (d, n) is one example per column
        data[String(name)] = reshape(v, d, n)
    end
    return cfg, data
end

# ---------------------------------------------------------------------------- models

function build_model(s, x::Matrix{Float32})
    nin, d = Int(s.input_dim), Int(s.latent_dim)
    hidden = Int[h for h in s.hidden]
    acts = Function[Flux.relu for _ in hidden]
    enc = AET.JointGaussianLogEncoder(nin, d, hidden, acts, Flux.identity)
    dec = AET.BernoulliDecoder(nin, d, reverse(hidden), acts, Flux.sigmoid)
    vae = enc * dec
    m = String(s.model)
    if m == "vae"
        return vae, AET.VAEs.train!, (β=1.0f0,)
    elseif m == "betavae"
        return vae, AET.VAEs.train!, (β=Float32(s.beta),)
    elseif m == "mmdvae"
        # AutoEncoderToolkit.jl cannot pass kernel options through `loss` (its kernel_kwargs
        # are splatted into mmd_div): the kernel keeps rho = 1 and the V-statistic MMD.
        model = AET.MMDVAEs.MMDVAE(vae)
        kw = (λ=Float32(s.mmd_lam), α=Float32(s.mmd_alpha), n_latent_samples=Int(s.batch_size))
        return model, AET.MMDVAEs.train!, kw
    elseif m == "hvae"
        model = AET.HVAEs.HVAE(vae)
        kw = (K=Int(s.K), ϵ=Float32(s.eps), βₒ=Float32(s.beta0))
        return model, AET.HVAEs.train!, kw
    elseif m == "rhvae"
        metric = AET.RHVAEs.MetricChain(nin, d, hidden, acts, Flux.identity)
        nc = Int(s.n_centroids)
        model = AET.RHVAEs.RHVAE(vae, metric, x[:, 1:nc], Float32(s.T), Float32(s.metric_lam))
        AET.RHVAEs.update_metric!(model)
        kw = (K=Int(s.K), ϵ=Float32(s.eps), βₒ=Float32(s.beta0), steps=Int(s.n_fixed_point))
        return model, AET.RHVAEs.train!, kw
    end
    error("unknown model $m")
end

# ---------------------------------------------------------------------------- timing

function summarize(ts::Vector{Float64})
    ms = sort(ts .* 1e3)
    return Dict("median_ms" => median(ms), "p25_ms" => quantile(ms, 0.25), "p75_ms" => quantile(ms, 0.75),
                "min_ms" => ms[1], "n" => length(ms))
end

function bench_setting(s, x::Matrix{Float32}, suite)
    rec = Dict{String,Any}("model" => String(s.model), "dataset" => String(s.dataset), "setting" => s,
                           "status" => "ok")
    try
        Random.seed!(0)
        model, train!, kw = build_model(s, x)
        opt = Flux.Train.setup(Flux.Optimisers.Adam(Float32(s.learning_rate)), model)
        bs = Int(s.batch_size)
        nb = min(16, size(x, 2) ÷ bs)
        batches = [x[:, (i - 1) * bs + 1:i * bs] for i in 1:nb]
        step!(i) = train!(model, batches[mod1(i, nb)], opt; loss_kwargs=kw)

        t_first = @elapsed step!(1)                      # includes Julia's JIT compilation
        for i in 1:Int(suite.warmup)
            step!(i)
        end
        n = Int(suite.rounds) * Int(suite.steps_per_round)
        ts = Float64[]
        for i in 1:n
            push!(ts, @elapsed step!(i))
        end
        steps = summarize(ts)

        n_ep = get(suite.epoch_examples, Symbol(String(s.dataset)), size(x, 2))
        xe = x[:, 1:(min(Int(n_ep), size(x, 2)) ÷ bs) * bs]
        epochs = Float64[]
        for e in 1:Int(suite.epochs)
            perm = randperm(size(xe, 2))
            push!(epochs, @elapsed begin
                for b in 1:(size(xe, 2) ÷ bs)
                    train!(model, xe[:, perm[(b - 1) * bs + 1:b * bs]], opt; loss_kwargs=kw)
                end
            end)
        end
        rec["aetk_jl"] = Dict("step" => steps, "first_step_s" => t_first,
                              "compile_s_estimate" => t_first - steps["median_ms"] / 1e3,
                              "epoch_s" => median(epochs), "epoch_all_s" => epochs,
                              "epoch_steps" => size(xe, 2) ÷ bs)
        println("  $(s.model)/$(s.dataset): step $(round(steps["median_ms"], digits=2)) ms, first $(round(t_first, digits=1)) s")
    catch err
        rec["status"] = "error"
        rec["error"] = sprint(showerror, err)
        println("  $(s.model)/$(s.dataset): error $(rec["error"])")
    end
    return rec
end

function main(args)
    length(args) == 2 || error("usage: julia bench.jl INPUT_DIR OUTPUT_JSON")
    cfg, data = load_inputs(args[1])
    suite = cfg.suite
    results = Dict{String,Any}(
        "schema" => 1, "lib" => "AutoEncoderToolkit.jl", "suite" => String(suite.name), "device" => "cpu",
        "date_utc" => string(Dates.now(Dates.UTC)),
        "versions" => Dict("julia" => string(VERSION), "AutoEncoderToolkit" => string(pkgversion(AutoEncoderToolkit)),
                           "Flux" => string(pkgversion(Flux))),
        "threads" => Threads.nthreads(),
        "notes" => ["AutoEncoderToolkit.jl's RHVAE recomputes its centroids' metric inside every loss call " *
                    "(aetk_jax metric_source='centroids'); its leapfrog gradients follow the Julia code, " *
                    "which the aetk_jax docs describe as departing from the paper.",
                    "Not interleaved with the Python libraries (separate process)."],
        "models" => Any[])
    for s in cfg.settings
        push!(results["models"], bench_setting(s, data[String(s.dataset)], suite))
    end
    mkpath(dirname(abspath(args[2])))
    open(args[2], "w") do io
        JSON3.pretty(io, results)
    end
    println("wrote $(args[2])")
end

main(ARGS)
